"""``<Trainer>_BoundedVal``: any nnU-Net trainer with :class:`~nnunet_ctorg.training.validation.BoundedValidation`.

``nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainer_BoundedVal`` trains exactly as ``nnUNetTrainer`` (the
loss, augmentation and schedule are untouched) and runs the final validation (and ``--val``) case by case in
chunks, within ``nnUNet_ctorg_val_max_ram_gb``. The same works for every trainer nnU-Net finds: its own variants
(``nnUNetTrainerNoMirroring_BoundedVal``, ``nnUNetTrainer_250epochs_BoundedVal``, ...) and the trainers of the
other folders listed in ``nnUNet_extTrainer``. The classes are made on first access (this module's
``__getattr__``), so that nothing is imported until a name is asked for; a checkpoint or a worker that
unpickles one makes it again the same way.
"""

import os

SUFFIX = "_BoundedVal"
_made: dict[str, type] = {}


def _find_trainer(name: str) -> type | None:
    """nnU-Net's trainer class ``name``: in nnU-Net's package, then in the other ``nnUNet_extTrainer`` folders."""
    from os.path import join

    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nnunet_ctorg.env import trainer_folder

    found = recursive_find_python_class(join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                        "nnunetv2.training.nnUNetTrainer", nnunetv2.__path__[0])
    if found is not None:
        return found
    ours = os.path.abspath(trainer_folder())
    for folder in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep):
        if folder and os.path.isdir(folder) and os.path.abspath(folder) != ours:
            found = recursive_find_python_class(folder, name, None, cleanup_imports_from_base_folder=True)
            if found is not None:
                return found
    return None


def bounded_variant(base: type) -> type:
    """The subclass of trainer ``base`` whose final validation is :class:`BoundedValidation`'s."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ctorg.training.validation import BoundedValidation

    if not (isinstance(base, type) and issubclass(base, nnUNetTrainer)):
        raise ValueError(f"{base!r} is not an nnU-Net trainer class")
    name = base.__name__ + SUFFIX
    if name not in _made:
        if issubclass(base, BoundedValidation):
            _made[name] = type(name, (base,), {"__module__": __name__})
        else:
            _made[name] = type(name, (BoundedValidation, base), {"__module__": __name__})
        _made[name].__doc__ = (f"``{base.__name__}`` with nnunet-ctorg's bounded final validation "
                               f"(``nnunet_ctorg.training.validation.BoundedValidation``).")
    return _made[name]


def __getattr__(name: str) -> type:
    if name in _made:
        return _made[name]
    if name.endswith(SUFFIX) and len(name) > len(SUFFIX):
        base = _find_trainer(name[:-len(SUFFIX)])
        if base is not None:
            return bounded_variant(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
