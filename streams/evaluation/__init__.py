"""What the labels bought: lift over the control slice, and when to stop.

Plain Python, no I/O: nothing here imports Kafka, Faust, ClickHouse, HTTP or the settings.
"""
