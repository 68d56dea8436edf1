import cProfile
import pstats
import runpy
import time

t = time.perf_counter()
pr = cProfile.Profile(); pr.enable()
runpy.run_path("/work/main/app/streamlit_app.py", run_name="__main__")
pr.disable()
print("script", round(time.perf_counter() - t, 2))
pstats.Stats(pr).sort_stats("cumulative").print_stats(60)
