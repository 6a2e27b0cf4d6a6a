"""Server-rendered pages: status, listeners, instances, Services, certificates, audit, access.

Pages render from the same queries as the API and write through the same operations;
htmx swaps in the parts that change (the selector preview, live status) without a build.
One module per area, each with its own blueprint, which the app factory registers.
"""
