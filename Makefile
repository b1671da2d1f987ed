# Everything installs into a project-local virtual environment, .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench-quality bench-samplers clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# Sample 64 digits from the shipped model, draw the forward process and the reverse GIF.
demo: setup
	$(BIN)/noisecraft sample --model digits --n 64 --seed 0 --out demo/samples --gif demo/reverse.gif
	$(BIN)/noisecraft forward --data digits --n 4 --out demo
	@echo "demo done: demo/samples/grid.png (64 samples), demo/reverse.gif (reverse process),"
	@echo "           demo/forward.png (forward process), demo/schedule.png (noise schedules)"

test: setup
	$(BIN)/python -m pytest

# Acceptance numbers for models/digits (about 30 minutes on 2 cores).
bench-quality: setup
	$(BIN)/python benchmarks/digits_quality.py --model digits --n 500

# Samplers: analytic data against diffusers (about 15 minutes), then models/digits per budget (2 minutes).
bench-samplers: setup
	$(BIN)/python benchmarks/samplers.py --n 4000
	$(BIN)/python benchmarks/digits_quality.py --model digits --n 500 --tag digits-budgets --samplers \
	  auto:5,learned:5,unipc:5:trailing,unipc:5:logsnr,dpmpp_2m:5:trailing,learned:10,unipc:10:trailing,unipc:20:trailing,unipc:20:logsnr,dpmpp_2m:20:trailing
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) demo
