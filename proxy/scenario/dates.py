"""The seed's date format: ``createdDateTime`` as the Azure Maps Creator service writes it.

Part of the scenario language (the ``created``/``createdDateTime`` of scripted operations); the
reference service (``proxy/creator_service.py``) uses it too, so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_created_date_time(moment: datetime) -> str:
    """Format ``moment`` (converted to UTC) the way the seed writes ``createdDateTime``.

    ``3/11/2020 8:45:13 PM +00:00``: month/day/year without zero padding, 12-hour clock, AM/PM.
    Built by hand so that it does not depend on the platform's strftime flags.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    hour12 = moment.hour % 12 or 12
    meridiem = "AM" if moment.hour < 12 else "PM"
    return (
        f"{moment.month}/{moment.day}/{moment.year} "
        f"{hour12}:{moment.minute:02d}:{moment.second:02d} {meridiem} +00:00"
    )
