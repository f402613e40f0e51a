"""Zero-shot vs adapted evaluation, reports and plots."""
