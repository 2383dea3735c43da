"""``nnunet_ctorg_env``: print the shell line that lets nnU-Net find the nnunet-ctorg trainers."""

import argparse
import os
import shlex


def trainer_folder() -> str:
    """Folder to list in ``nnUNet_extTrainer`` (the installed ``nnunet_ctorg.trainers``)."""
    import nnunet_ctorg.trainers

    return os.path.dirname(os.path.abspath(nnunet_ctorg.trainers.__file__))


def ext_trainer_value(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` with our folder first and any other folders kept."""
    ours = trainer_folder()
    others = [p for p in (current or "").split(os.pathsep) if p and os.path.abspath(p) != ours]
    return os.pathsep.join([ours, *others])


def export_line(shell: str = "bash", current: str | None = None) -> str:
    value = ext_trainer_value(current)
    if shell == "fish":
        return f"set -gx nnUNet_extTrainer {shlex.quote(value)}"
    if shell == "powershell":
        return f'$env:nnUNet_extTrainer = "{value}"'
    if shell == "cmd":
        return f"set nnUNet_extTrainer={value}"
    return f"export nnUNet_extTrainer={shlex.quote(value)}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Print the line that sets nnUNet_extTrainer so that nnUNetv2_train and nnUNetv2_predict "
                    "find CTOrgIOUTrainer and its variants. Use: eval \"$(nnunet_ctorg_env)\"")
    parser.add_argument("--shell", choices=["bash", "fish", "powershell", "cmd"], default="bash",
                        help="syntax of the printed line (bash also fits zsh and sh). Default: bash")
    parser.add_argument("--replace", action="store_true",
                        help="drop folders already listed in nnUNet_extTrainer instead of keeping them after ours")
    args = parser.parse_args()
    current = None if args.replace else os.environ.get("nnUNet_extTrainer")
    print(export_line(args.shell, current))


if __name__ == "__main__":
    main()
