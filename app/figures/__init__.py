"""Figure builders for the dashboard: pure functions returning plotly Figures (and the frames behind them).

They never call ``st.*`` so they can be unit-tested without Streamlit.
"""
