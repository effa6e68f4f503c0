"""What annotators give back: the label-task join, consensus, gold checks, agreement.

Plain Python, no I/O: nothing here imports Kafka, Faust, ClickHouse, HTTP or the settings.
"""
