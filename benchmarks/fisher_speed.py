"""Fisher-vector encoding speed: medsight against skimage.feature.fisher_vector (and VLFeat
through cyvlfeat when it is importable), in one run on the same GMM and descriptors.

    .venv/bin/python benchmarks/fisher_speed.py
    .venv/bin/python benchmarks/fisher_speed.py --images 200 --repeats 5

CNN-like descriptors: T=196 cells per image (a 14x14 feature map), D=512, non-negative and
L2-normalised, drawn around 64 sparse prototypes so that, as for real conv5 features, the GMM's
posteriors are nearly hard (the script prints how many components per descriptor exceed 1e-4).
All encoders produce IFV codes (improved=True). Times are medians over the repeats of encoding
all images, divided by the number of images. skimage's codes carry K extra weight gradients,
have the variance part negated and are normalised over all three parts; the check compares the
mean and variance parts after matching sign and norm.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from medsight.features.fisher import FisherVector, fisher_vector, fisher_vectors


def descriptor_sets(rng, n, prototypes, t, noise):
    d = prototypes.shape[1]
    sets = []
    for _ in range(n):
        x = prototypes[rng.integers(0, len(prototypes), t)]
        x = np.maximum(x + noise / np.sqrt(d) * rng.normal(size=(t, d)), 0)  # ReLU features
        sets.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return sets


def max_rel_diff(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--components", type=int, default=64)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--cells", type=int, default=196)
    parser.add_argument("--noise", type=float, default=3.3, help="spread around the prototypes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from skimage.feature import fisher_vector as sk_fisher_vector
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(args.seed)
    k, d, t = args.components, args.dim, args.cells
    prototypes = np.abs(rng.normal(size=(k, d))) * (rng.random((k, d)) < 0.3)
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    train = descriptor_sets(rng, 200, prototypes, t, args.noise)
    images = descriptor_sets(rng, args.images, prototypes, t, args.noise)

    start = time.perf_counter()
    fv = FisherVector(n_components=k, random_state=args.seed).fit(train)
    fit_s = time.perf_counter() - start
    gmm = (fv.weights_, fv.means_, fv.variances_)
    sk_gmm = GaussianMixture(k, covariance_type="diag")
    sk_gmm.weights_, sk_gmm.means_, sk_gmm.covariances_ = gmm
    sk_gmm.precisions_cholesky_ = 1 / np.sqrt(fv.variances_)
    post = sk_gmm.predict_proba(np.concatenate(images))
    hard = (post > 1e-4).sum(1).mean()

    sk_name = "skimage.feature.fisher_vector, per image"
    runs = {
        "medsight, batched (fisher_vectors)": lambda xs: fisher_vectors(xs, *gmm),
        "medsight, per image (fisher_vector)": lambda xs: np.stack([fisher_vector(x, *gmm) for x in xs]),
        sk_name: lambda xs: np.stack([sk_fisher_vector(x, sk_gmm, improved=True) for x in xs]),
    }
    try:
        from cyvlfeat.fisher import fisher as vl_fisher

        # cyvlfeat wants float32 with one column per descriptor / component
        means32, vars32 = (np.ascontiguousarray(a.T, np.float32) for a in (fv.means_, fv.variances_))
        w32 = fv.weights_.astype(np.float32)
        runs["VLFeat (cyvlfeat), per image"] = lambda xs: np.stack(
            [np.ravel(vl_fisher(np.ascontiguousarray(x.T, np.float32), means32, vars32, w32, improved=True))
             for x in xs])
        vlfeat = "VLFeat through cyvlfeat (float32, posteriors below 1e-6 skipped)"
    except ImportError:
        vlfeat = "cyvlfeat is not importable here: VLFeat not measured"

    for fn in runs.values():  # warm up (imports, allocator, BLAS threads)
        fn(images[:5])
    times, codes = {}, {}
    for _ in range(args.repeats):  # interleave the methods so all see the same machine state
        for name, fn in runs.items():
            start = time.perf_counter()
            codes[name] = fn(images)
            times.setdefault(name, []).append(time.perf_counter() - start)
    ms = {name: 1e3 * float(np.median(v)) / args.images for name, v in times.items()}

    # value checks on the matching parts (mean and variance gradients)
    sk = codes[sk_name]
    ref = np.concatenate([sk[:, k:k + k * d], -sk[:, k + k * d:]], axis=1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ours = codes["medsight, batched (fisher_vectors)"]
    exact = fisher_vectors(images, *gmm, min_posterior=0.0)
    checks = {
        "batched vs per image": max_rel_diff(ours, codes["medsight, per image (fisher_vector)"]),
        "min_posterior=0 vs skimage (same definition)": max_rel_diff(exact, ref),
        "min_posterior=1e-4 (default) vs skimage (no threshold)": max_rel_diff(ours, ref),
    }
    if "VLFeat (cyvlfeat), per image" in codes:
        checks["VLFeat vs skimage"] = max_rel_diff(codes["VLFeat (cyvlfeat), per image"], ref)

    sk_ms = ms[sk_name]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    from threadpoolctl import threadpool_info

    blas = ", ".join(f"{p['internal_api']} {p['num_threads']} threads" for p in threadpool_info())
    print(f"T={t} descriptors of D={d} per image, K={k}, {args.images} images, median of "
          f"{args.repeats} repeats; {os.cpu_count()} CPUs ({blas}), load average {load}")
    print(f"GMM fit (FisherVector.fit, {sum(map(len, train))} descriptors): {fit_s:.1f} s")
    print(f"components with posterior > 1e-4 per descriptor: {hard:.3f}")
    print(vlfeat)
    print()
    print("| method | ms per image | skimage / this |")
    print("|:---|---:|---:|")
    for name, value in ms.items():
        print(f"| {name} | {value:.3f} | {sk_ms / value:.2f}x |")
    print()
    print("max |difference| / max |value| of the IFV mean and variance parts:")
    for name, value in checks.items():
        print(f"- {name}: {value:.2e}")
    assert checks["batched vs per image"] < 1e-12
    assert checks["min_posterior=0 vs skimage (same definition)"] < 1e-5


if __name__ == "__main__":
    main()
