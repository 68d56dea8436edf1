"""DecAlign Studio's dashboard (``python3 -m app``)."""

from __future__ import annotations

import gc


def import_all(names: tuple[str, ...]) -> list[str]:
    """Import ``names`` in order, ahead of the pages that use them; returns those that failed (the page's own
    import reports the error where the user sees it).

    Then every object tracked so far is moved to the garbage collector's permanent generation
    (``gc.freeze``): Streamlit runs a full collection after every script run, and scanning the 320,000
    objects that importing torch, pandas, plotly and scikit-learn leaves took 0.13 s of held GIL each time
    (0 s once frozen). Module objects live as long as the server anyway; a reference cycle that a page
    made before this moment and dropped later is not collected (a one-time cost at most, twice a server).
    """
    from decalign.imports import import_ahead

    failed = import_ahead(names)
    gc.freeze()
    return failed
