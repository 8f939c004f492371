"""Fixtures for the AWS deployment tests: a moto server of their own (with AWS managed policies), and its target."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdlab.aws import AwsTarget


@pytest.fixture()
def aws() -> Iterator[AwsTarget]:
    """A fresh moto server process per test (sdlab.deploy.rehearsal), stopped afterwards."""
    from sdlab.deploy import rehearsal

    run = rehearsal.start()
    try:
        yield run.target
    finally:
        run.stop()


@pytest.fixture()
def names(test_settings):
    from sdlab.deploy.names import DeployNames

    return DeployNames.of(test_settings)
