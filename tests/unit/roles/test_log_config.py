"""Each Synapse process's log configuration: its own rotated file, warnings also to the journal.

The rendered configuration is loaded by Python's logging the way Synapse
loads it (dictConfig, with Synapse's own buffering handler), in a scratch
directory, and then written to until it rotates.
"""

from __future__ import annotations

import logging
import logging.config
import re

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

from conftest import ROOT

MAIN = ROOT / "roles" / "synapse_main"

init_plugin_loader()


def render(log_dir, process, **extra):
    loader = DataLoader()
    variables = loader.load_from_file(str(MAIN / "defaults" / "main.yml"), trusted_as_template=True)
    variables.update(
        synapse_server_name="example.org",
        synapse_database_password="not-a-secret",
        ansible_managed="Ansible managed: polylith.synapse test",
        synapse_main_log_dir=str(log_dir),
        synapse_main_log_process=process,
        **extra,
    )
    text = (MAIN / "templates" / "log_config.yaml.j2").read_text()
    return Templar(loader=loader, variables=variables).template(trust_as_template(text))


def test_every_process_logs_to_its_own_file_in_one_directory(tmp_path):
    main = yaml.safe_load(render(tmp_path, "main"))
    sync = yaml.safe_load(render(tmp_path, "sync1"))
    assert main["handlers"]["file"]["filename"] == str(tmp_path / "main.log")
    assert sync["handlers"]["file"]["filename"] == str(tmp_path / "sync1.log")
    assert main["handlers"]["file"]["class"] == "logging.handlers.RotatingFileHandler"
    assert main["handlers"]["file"]["maxBytes"] == 50 * 1024 * 1024
    assert main["handlers"]["file"]["backupCount"] == 5
    assert main["handlers"]["journal"]["level"] == "WARNING"
    assert main["root"]["handlers"] == ["buffer", "journal"]


def test_the_file_rotates_and_the_journal_gets_warnings_only(tmp_path, capsys):
    config = yaml.safe_load(render(tmp_path, "sync1", synapse_main_log_max_mib=1, synapse_main_log_backup_count=2))
    # Synapse adds the request to every record; outside Synapse a filter does.
    logging.setLogRecordFactory(_with_request(logging.getLogRecordFactory()))
    try:
        logging.config.dictConfig(config)
        log = logging.getLogger("synapse.test")
        line = "x" * 1000
        for _ in range(4 * 1100):  # about 4.2 MiB through a 1 MiB file
            log.info(line)
        log.warning("the disk is on fire")
        logging.shutdown()
    finally:
        logging.setLogRecordFactory(logging.LogRecord)
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["sync1.log", "sync1.log.1", "sync1.log.2"]  # two kept, older ones dropped
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 1024 * 1024
    assert "WARNING" in (tmp_path / "sync1.log").read_text()
    assert " - sync1 - synapse.test - " in (tmp_path / "sync1.log").read_text()
    # The journal (stderr) got the warning alone, without a time stamp (journald adds it).
    journal = capsys.readouterr().err
    assert re.fullmatch(r"sync1 - synapse\.test - \d+ - WARNING - - - the disk is on fire\n", journal), journal


def _with_request(factory):
    def make(*args, **kwargs):
        record = factory(*args, **kwargs)
        record.request = "-"
        return record

    return make
