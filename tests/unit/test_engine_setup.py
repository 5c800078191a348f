"""What rqscale keeps out of a terminal of the frameworks' output (rqscale/engine/setup.py)."""
import logging
import warnings

from rqscale.engine.setup import printed_to_log, quiet_framework_output


def test_printed_lines_go_to_the_log_not_the_terminal(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="rqscale.test"):
        with printed_to_log("rqscale.test"):
            print("DeepSpeed op built successfully")
            print("second line")
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records if r.name == "rqscale.test"] == ["DeepSpeed op built successfully", "second line"]


def test_only_torch_distributeds_deprecations_and_the_cuda_home_notice_are_dropped():
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet_framework_output()
            for module in ("torch.distributed.c10d_logger", "rqscale.train.loop"):
                warnings.warn_explicit("deprecated", FutureWarning, "x.py", 1, module=module)
            warnings.warn_explicit("other", UserWarning, "x.py", 1, module="torch.distributed.c10d_logger")
        assert sorted((str(w.message), w.category.__name__) for w in seen) == [("deprecated", "FutureWarning"),
                                                                               ("other", "UserWarning")]
        assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(logging.ERROR)
    finally:
        logger.setLevel(level)
