"""What the labels bought: lift over the control slice, labels saved against random sampling, and when to stop.

Plain Python, no I/O: nothing here imports Kafka, Faust, ClickHouse, HTTP or the settings.
"""
