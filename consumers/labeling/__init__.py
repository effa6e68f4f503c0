"""The labeling service: a durable queue of tasks, an HTTP API and a web UI for annotators.

``store`` the queue in SQLite · ``feed`` Kafka into the queue · ``rerank`` priorities
under a new model version · ``tokens`` who may do what · ``guard`` what a request
passes before the API reads it · ``ratelimit`` budgets per address and token, and
lockouts · ``outbox`` labels out to Kafka · ``audit`` who did what, when, from
where · ``api`` the HTTP API · ``ui/`` the page · ``service`` all of it in one
process · ``cli`` the ``serve-labeling`` command.
"""
