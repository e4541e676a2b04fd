"""The SignalSmith event debugger: every event's path through the pipeline, live and on demand.

An ``observe_outcomes`` implementation records what each stage did that is not routine, and a
sink of the plugin's own records every buffered event in the worker (``recorder``), into capped
Redis streams per source (the live page) and per-messageId traces kept for days within a memory
cap (``trace``); the page at ``/debugger``, its Server-Sent Events feed (``live``), the trace
API and ``signalsmith trace`` read them back, behind the admin token or a token scoped to
sources (``access``).
"""
