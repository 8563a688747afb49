# edgefleet: the two commands most people need are `make lab` and `make test`.
.PHONY: help test test-arm64 lab lab-down clean

help:
	@echo "make lab         create the lab site controller (local container) and run site.yml against it"
	@echo "make lab-down    remove the lab controller container (generated lab secrets are kept)"
	@echo "make test        the whole suite: lint, pytest, every Molecule scenario"
	@echo "make test-arm64  converge the mosquitto scenario on an arm64 container under qemu (slow)"

test:
	bash tools/test.sh

test-arm64:
	bash tools/test.sh --arm64

lab:
	bash tools/lab.sh up

lab-down:
	bash tools/lab.sh down

clean:
	rm -rf .venv .pytest_cache
