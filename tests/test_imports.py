import subprocess
import sys


def loaded_after(statement):
    code = f"import sys; {statement}; print(sorted(m for m in ('torch', 'lightning', 'mlflow', 'pytorch_lightning', 'dvc') if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_package_import_loads_neither_lightning_nor_mlflow():
    assert loaded_after("import kiwi_pipe_optim") == "[]"


def test_public_api_loads_torch_only():
    assert loaded_after("from kiwi_pipe_optim import OptimizerConfig, from_config, OPTIMIZERS_MAPPING, "
                        "get_noam_decay_schedule, optimizer_class, optimizer_name, logger") == "['torch']"


def test_public_names():
    import kiwi_pipe_optim

    for name in kiwi_pipe_optim.__all__:
        assert getattr(kiwi_pipe_optim, name) is not None
    assert kiwi_pipe_optim.logger.name == "kiwi_pipe_optim"
