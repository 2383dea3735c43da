"""``nnunet_ctorg_plan_and_preprocess``: nnU-Net's plan and preprocess plus an anti-aliased 3 mm configuration."""

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="nnU-Net's fingerprint, planning and preprocessing (as nnUNetv2_plan_and_preprocess), plus a "
                    "configuration 3d_<r>mm at isotropic spacing r whose images are low-pass filtered before "
                    "downsampling (sigma_k = f * max(r/u_k - 1, 0) voxels). Train it with nnUNetv2_train D 3d_3mm F "
                    "-tr CTOrgIOUTrainer; predict with nnunet_ctorg_predict_chunked (which applies the filter).")
    parser.add_argument("-d", nargs="+", type=int, required=True, help="dataset id(s)")
    parser.add_argument("--spacing", type=float, default=3.0, help="isotropic spacing r in mm of the added "
                        "configuration (default 3; the configuration is named 3d_<r>mm, e.g. 3d_3mm)")
    parser.add_argument("--sigma_factor", type=float, default=1 / 3, help="f in sigma_k = f * max(r/u_k - 1, 0) "
                        "(default 1/3, paper 003); 0 disables the filter")
    parser.add_argument("-c", nargs="+", default=None, help="configurations to preprocess (default: 3d_fullres and "
                        "the added one)")
    parser.add_argument("-np", type=int, default=2, help="processes for preprocessing (default 2)")
    parser.add_argument("-npfp", type=int, default=2, help="processes for the fingerprint (default 2)")
    parser.add_argument("-gpu_memory_target", type=float, default=None, help="GPU memory (GB) nnU-Net plans for "
                        "(default: nnU-Net's 8)")
    parser.add_argument("-overwrite_plans_name", default="nnUNetPlans", help="plans identifier (default "
                        "nnUNetPlans: the configuration is added next to nnU-Net's own)")
    parser.add_argument("--verify_dataset_integrity", action="store_true", help="run nnU-Net's dataset check first")
    parser.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    parser.add_argument("--no_pbar", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.spacing > 0:
        raise SystemExit(f"error: --spacing must be > 0, got {args.spacing}")
    if args.sigma_factor < 0:
        raise SystemExit(f"error: --sigma_factor must be >= 0, got {args.sigma_factor}")
    from nnunet_ctorg.dataset_conversion.common import raw_root
    from nnunet_ctorg.dataset_conversion.merge import find_dataset

    try:
        for dataset_id in args.d:
            find_dataset(raw_root(None), dataset_id)
    except (ValueError, OSError) as e:
        raise SystemExit(f"nnunet_ctorg_plan_and_preprocess: error: {e}") from None
    for dataset_id in args.d:
        plan_and_preprocess(dataset_id, args)


def plan_and_preprocess(dataset_id: int, args: argparse.Namespace) -> None:
    """Fingerprint, plans with the added configuration, preprocessing of the chosen configurations."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset

    from nnunet_ctorg.planning.antialiasing import AntiAliasedPreprocessor, IsotropicAntiAliasedPlanner

    extract_fingerprint_dataset(dataset_id, num_processes=args.npfp,
                                check_dataset_integrity=args.verify_dataset_integrity, clean=True,
                                verbose=False, show_progress_bar=not args.no_pbar)
    kwargs = {} if args.gpu_memory_target is None else {"gpu_memory_target_in_gb": args.gpu_memory_target}
    planner = IsotropicAntiAliasedPlanner(dataset_id, plans_name=args.overwrite_plans_name,
                                          isotropic_spacing=args.spacing, sigma_factor=args.sigma_factor,
                                          **kwargs)
    plans = planner.plan_experiment()
    added = planner.configuration_name
    print(f"added configuration {added}: patch {plans['configurations'][added]['patch_size']}, batch "
          f"{plans['configurations'][added]['batch_size']}, spacing {plans['configurations'][added]['spacing']}")
    if args.no_pp:
        return
    configurations = args.c or ["3d_fullres", added]
    theirs = [c for c in configurations if c != added]
    if theirs:
        preprocess_dataset(dataset_id, args.overwrite_plans_name, theirs, [args.np], verbose=False,
                           show_progress_bar=not args.no_pbar)
    if added in configurations:
        preprocessor = AntiAliasedPreprocessor(verbose=False)
        preprocessor.show_progress_bar = not args.no_pbar
        preprocessor.run(dataset_id, added, args.overwrite_plans_name, num_processes=args.np)
        if not theirs:  # nnU-Net's step copies the reference labels for validation
            preprocess_dataset(dataset_id, args.overwrite_plans_name, [], [args.np], verbose=False)


if __name__ == "__main__":
    main()
