"""Accuracy, latency, SRAM and flash of device artefacts against MCU budgets. Installed as edgekd.benchmarks."""
