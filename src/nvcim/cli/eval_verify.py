"""`nvcim eval CKPT --verify-fractions F1,F2,..`: accuracy against the fraction of write-verified weights, at one σ
(nvcim.writeverify), printed, and written as a write_verify results file (--out) and CSV (--csv)."""

from __future__ import annotations

import sys

from nvcim.cli.eval import note_few_chips


def run_write_verify(args, ckpt, model, config, spec, dataset, splits, split, cfg, train_sigma, verify, recalibration,
                     device, mc, adc_record) -> int:
    """`nvcim eval --verify-fractions`: accuracy vs the fraction of write-verified weights, at one σ."""
    from nvcim.cli.eval_data import digital_override
    from nvcim.evaluate.files import WriteVerifyFile, write_result_file
    from nvcim.writeverify import fraction_for_target, points_table, write_points_csv, write_verify_curve

    if verify["by"] == "sensitivity" and len(splits.train) == 0:
        raise ValueError(f"the train split of {dataset} is empty: --verify-by sensitivity needs training images "
                         "(or use --verify-by magnitude)")
    if verify["residual_sigma"] >= cfg.sigma:
        print(f"nvcim eval: note: --verify-sigma {verify['residual_sigma']:g} is not below σ {cfg.sigma:g}: verified "
              "devices vary as much as the others, so every fraction gives the same accuracy", file=sys.stderr)
    points = write_verify_curve(model, split, cfg, verify["fractions"], verify["by"],
                                residual_sigma=verify["residual_sigma"], score_data=splits.train,
                                score_images=verify["images"], **mc)
    print(f"{ckpt}: {spec.get('name', '?')} on {dataset} ({args.split}, {points[0]['result'].n_samples} images), "
          f"σ {cfg.sigma:g} (training σ {train_sigma:g}), device {device}, {mc['runs']} runs per fraction, "
          f"seed {mc['seed']}; "
          f"write-verify by {verify['by']}, verified devices left at σ {min(verify['residual_sigma'], cfg.sigma):g}, "
          f"{points[0]['plan'].n_weights} weights x {cfg.devices_per_weight} devices")
    print(points_table(points))
    note_few_chips([p["result"] for p in points])
    hit = None
    if verify["target"] is not None:
        hit = fraction_for_target(points, verify["target"], verify["stat"])
        note_rough_stat(verify["stat"], points[0]["result"].percentile_chips)
        if hit is None:
            print(f"no fraction tried reaches {verify['stat']} >= {verify['target']:g} %")
        else:
            print(f"{verify['stat']} >= {verify['target']:g} % from fraction {hit['fraction']:g}: "
                  f"{hit['verified_devices']} verified devices")
    record = WriteVerifyFile(
        checkpoint=str(ckpt), checkpoint_config=config, dataset=dataset, split=args.split,
        device_config=cfg.to_dict(), bn_recalibration=recalibration, adc_calibration=adc_record,
        digital_layers=digital_override(args.digital_layers), device_model=args.device_model or None,
        write_verify={"by": verify["by"], "residual_sigma": verify["residual_sigma"],
                      "score_images": min(verify["images"] or len(splits.train), len(splits.train))
                      if verify["by"] == "sensitivity" else None,  # the images that ranked the weights (at most all)
                      "target": verify["target"], "stat": verify["stat"],
                      "fraction_for_target": hit["fraction"] if hit else None},
        points=[{"fraction": p["fraction"], "verified_weights": p["verified_weights"],
                 "verified_devices": p["verified_devices"], "result": p["result"]} for p in points],
    )
    if args.out:
        write_result_file(args.out, record)
        print(f"wrote {args.out}")
    if args.csv:
        write_points_csv(args.csv, points, device_model=args.device_model)
        print(f"wrote {args.csv}")
    return 0


def note_rough_stat(stat: str, chips: int) -> None:
    """One note on stderr when the statistic the target is judged by is a percentile `chips` chips cannot estimate."""
    from nvcim.evaluate.stats import percentile_estimable

    if stat.startswith("p") and not percentile_estimable(float(stat[1:]), chips):
        need = -(-100 // int(stat[1:]))
        print(f"nvcim eval: note: --verify-stat {stat} from {chips} chips is close to their interpolated minimum "
              f"(it needs >= {need} chips); use --runs {need} or more", file=sys.stderr)
