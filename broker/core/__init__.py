"""broker.core: the broker's scheduling core, sans-IO.

One owner, `Scheduler`, holds every piece of the broker's state and changes it only in
`handle(event, now)` and `tick(now)`, which return the commands for the shell to carry out.
No sockets, no clock, no threads, no files: time comes in as `now`. See docs/architecture.md.
"""
