"""The run's log: one folder per run, a quiet console, and no colour codes outside a terminal."""

from __future__ import annotations

import io
import logging

from recbole.utils import set_color

from recbole_lumos.config import build_config
from recbole_lumos.run_log import FILE_ONLY, init_console_logger, init_run_logger, run_log_dir


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_run_logs_to_one_folder_and_keeps_the_dump_off_the_console(isolated):
    config = build_config("FedSASRec", "ml-100k")
    console = io.StringIO()
    folder = init_run_logger(config, stream=console)
    assert run_log_dir() == folder and folder.parent == isolated / "log" / "FedSASRec"
    logger = logging.getLogger()
    logger.info(config, extra=FILE_ONLY)
    logger.info(set_color("[Training]: ", "pink") + "train_batch_size = [256]")
    logger.info(set_color("test result", "yellow") + ": {'ndcg@20': 0.1}")
    text = (folder / "run.log").read_text()
    assert "federated_eval_step" in text and "[Training]" in text and "test result" in text
    shown = console.getvalue()
    assert "federated_eval_step" not in shown and "[Training]" not in shown
    assert "test result: {'ndcg@20': 0.1}" in shown
    assert "\x1b[" not in shown and "\x1b[" not in text  # not a terminal: no colour codes
    assert not (isolated / "log_tensorboard").exists()


def test_verbose_brings_the_dump_back_and_a_terminal_gets_colours(isolated):
    config = build_config("SASRec", "ml-100k")
    console = Terminal()
    init_run_logger(config, verbose=True, stream=console)
    logging.getLogger().info(config, extra=FILE_ONLY)
    logging.getLogger().warning("careful")
    assert "eval_args" in console.getvalue() and "\x1b[" in console.getvalue()


def test_two_runs_of_one_config_in_the_same_second_get_two_folders(isolated):
    config = build_config("SASRec", "ml-100k")
    first = init_run_logger(config, stream=io.StringIO())
    second = init_run_logger(config, stream=io.StringIO())
    assert first != second and first.is_dir() and second.is_dir()
    assert run_log_dir() == second  # the earlier run's handlers were replaced


def test_a_console_only_command_writes_no_colour_codes_to_a_pipe():
    pipe = io.StringIO()
    init_console_logger(stream=pipe)
    logging.getLogger().info(set_color("views", "blue") + ": ready")
    assert pipe.getvalue().rstrip().endswith("views: ready") and "\x1b[" not in pipe.getvalue()
