"""Batch scoring (``medai score``): every study under folders, zips or a manifest into one results file.

:mod:`~medai.batch.plan` finds and selects series (headers only) and makes
jobs, :mod:`~medai.batch.job` scores one job into a row (never raises for a bad
series), :mod:`~medai.batch.pool` runs jobs in-process, in local processes or on
Dask, :mod:`~medai.batch.run` ties them to a durable, resumable
:mod:`~medai.report.results` file; :mod:`~medai.batch.pseudonym` replaces
identifiers; :mod:`~medai.batch.cli` is the command.
"""
