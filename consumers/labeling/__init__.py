"""The labeling service: a durable queue of tasks, an HTTP API and a web UI for annotators.

``store`` the queue in SQLite · ``feed`` Kafka into the queue · ``rerank`` priorities
under a new model version · ``tokens`` who may do what · ``outbox`` labels out to
Kafka · ``api`` the HTTP API · ``ui/`` the page · ``service`` all of it in one
process · ``cli`` the ``serve-labeling`` command.
"""
