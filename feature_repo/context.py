"""The request context — hour of day, weekday, weekend, month of a moment (UTC) — computed by one
function for Feast's on-demand ``context`` view, the trainer (each training target's own time) and
serving (the request time), so the three cannot drift apart."""

from __future__ import annotations

import pandas as pd

# Feature → number of values (hour 0-23, Monday = 0 … Sunday = 6, weekend 0/1, month 1-12). Models embed
# value + 1, keeping index 0 for padding.
CONTEXT = {"hour_of_day": 24, "day_of_week": 7, "is_weekend": 2, "month": 13}


def context_values(times: pd.Series) -> pd.DataFrame:
    """The context of each moment (datetimes, or anything ``pd.to_datetime`` reads as UTC)."""
    t = pd.to_datetime(times, utc=True)
    return pd.DataFrame(
        {
            "hour_of_day": t.dt.hour.astype("int64"),
            "day_of_week": t.dt.dayofweek.astype("int64"),
            "is_weekend": (t.dt.dayofweek >= 5).astype("int64"),
            "month": t.dt.month.astype("int64"),
        }
    )
