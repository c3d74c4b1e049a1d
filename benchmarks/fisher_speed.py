"""Fisher-vector encoding speed: medsight against skimage.feature.fisher_vector (and VLFeat
through cyvlfeat when it is importable: it needs Debian's libvlfeat-dev, see RESULTS.md), in one run
on the same GMM and descriptors.

    .venv/bin/python -m benchmarks.fisher_speed                 # BLAS threads: the environment's
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.fisher_speed --repeats 9
    .venv/bin/python -m benchmarks.fisher_speed --threads 2     # sets the BLAS threads itself

CNN-like descriptors: T=196 cells per image (a 14x14 feature map), D=512, non-negative and
L2-normalised, drawn around 64 sparse prototypes so that, as for real conv5 features, the GMM's
posteriors are nearly hard (the script prints how many components per descriptor exceed 1e-4).
All encoders produce IFV codes (improved=True). The methods run interleaved, each repeat encoding
all images once; times are medians over the repeats divided by the number of images, and the
ratio is the median over the repeats of skimage's time over the method's (the machine's load
moves both alike). skimage's codes carry K extra weight gradients, have the variance part negated
and are normalised over all three parts; the checks compare the mean and variance parts after
matching sign and norm. The default threshold is checked against a dense float64 computation of
the same definition (the test suite's reference), on the first --check-images images.

The last table times single steps that any encoder of this design performs for one image, in the
same process: the float32 GEMM of the log-likelihoods and the square roots of IFV are a floor for
medsight, skimage's predict_proba a part of its time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np

from medsight.features.fisher import FisherVector, fisher_vector, fisher_vectors

OURS = "medsight, batched (fisher_vectors)"
OURS_ONE = "medsight, per image (fisher_vector)"
OURS_DENSE = "medsight, batched, min_posterior=0 (skimage's output)"
OURS_VL = "medsight, batched, min_posterior=1e-6 (VLFeat's output)"
SKIMAGE = "skimage.feature.fisher_vector, per image"
VLFEAT = "VLFeat (cyvlfeat), per image"


def descriptor_sets(rng, n, prototypes, t, noise):
    d = prototypes.shape[1]
    sets = []
    for _ in range(n):
        x = prototypes[rng.integers(0, len(prototypes), t)]
        x = np.maximum(x + noise / np.sqrt(d) * rng.normal(size=(t, d)), 0)  # ReLU features
        sets.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return sets


def dense_ifv(x, w, mu, var, min_posterior):
    """The IFV straight from the definition in float64 (as tests/test_fisher.py's dense_fv)."""
    dist = ((x[:, None] - mu) ** 2 / var).sum(2)
    logp = np.log(w) - 0.5 * (np.log(2 * np.pi * var).sum(1) + dist)
    g = np.exp(logp - logp.max(1, keepdims=True))
    g /= g.sum(1, keepdims=True)
    g[g < min_posterior] = 0
    z = (x[:, None] - mu) / np.sqrt(var)
    u = np.einsum("tk,tkd->kd", g, z) / (len(x) * np.sqrt(w)[:, None])
    v = np.einsum("tk,tkd->kd", g, z**2 - 1) / (len(x) * np.sqrt(2 * w)[:, None])
    fv = np.concatenate([u.ravel(), v.ravel()])
    s = np.sign(fv) * np.sqrt(np.abs(fv))
    return s / np.linalg.norm(s)


def max_rel_diff(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--components", type=int, default=64)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--cells", type=int, default=196)
    parser.add_argument("--noise", type=float, default=3.3, help="spread around the prototypes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="BLAS threads (default: the environment's)")
    parser.add_argument("--check-images", type=int, default=20,
                        help="images checked against the dense float64 reference")
    args = parser.parse_args()
    from skimage.feature import fisher_vector as sk_fisher_vector
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_info, threadpool_limits

    limit = threadpool_limits(args.threads) if args.threads else contextlib.nullcontext()
    with limit:
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
        hard = (sk_gmm.predict_proba(np.concatenate(images)) > 1e-4).sum(1).mean()

        runs = {
            OURS: lambda xs: fisher_vectors(xs, *gmm),
            OURS_ONE: lambda xs: np.stack([fisher_vector(x, *gmm) for x in xs]),
            # equal outputs: skimage's definition (every posterior), and VLFeat's (posteriors from 1e-6)
            OURS_DENSE: lambda xs: fisher_vectors(xs, *gmm, min_posterior=0.0),
            OURS_VL: lambda xs: fisher_vectors(xs, *gmm, min_posterior=1e-6),
            SKIMAGE: lambda xs: np.stack([sk_fisher_vector(x, sk_gmm, improved=True) for x in xs]),
        }
        try:
            from cyvlfeat.fisher import fisher as vl_fisher

            # cyvlfeat (0.7) wants float32 rows: (T, D) descriptors, (K, D) means and variances
            means32, vars32 = (np.ascontiguousarray(a, np.float32) for a in (fv.means_, fv.variances_))
            w32 = fv.weights_.astype(np.float32)
            runs[VLFEAT] = lambda xs: np.stack(
                [vl_fisher(np.ascontiguousarray(x, np.float32), means32, vars32, w32, improved=True)
                 for x in xs])
            vlfeat = "VLFeat through cyvlfeat: measured (float32, posteriors below 1e-6 skipped)"
        except ImportError:
            vlfeat = "VLFeat: not measured (cyvlfeat is not installed here)"

        for fn in runs.values():  # warm up (imports, allocator, BLAS threads, GMM constants)
            fn(images[:5])
        times, codes = {}, {}
        for _ in range(args.repeats):  # interleaved, so that all see the same machine state
            for name, fn in runs.items():
                start = time.perf_counter()
                codes[name] = fn(images)
                times.setdefault(name, []).append(time.perf_counter() - start)
        ms = {name: 1e3 * float(np.median(v)) / args.images for name, v in times.items()}
        ratio = {name: float(np.median(np.array(times[SKIMAGE]) / np.array(v)))
                 for name, v in times.items()}

        # value checks on the matching parts (mean and variance gradients)
        sk = codes[SKIMAGE]
        ref = np.concatenate([sk[:, k:k + k * d], -sk[:, k + k * d:]], axis=1)
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        ours = codes[OURS]
        n_check = min(args.check_images, args.images)
        dense = np.stack([dense_ifv(x, *gmm, 1e-4) for x in images[:n_check]])
        checks = {
            "batched vs per image": max_rel_diff(ours, codes[OURS_ONE]),
            "min_posterior=0 vs skimage (same definition)":
                max_rel_diff(fisher_vectors(images, *gmm, min_posterior=0.0), ref),
            f"min_posterior=1e-4 (default) vs dense float64 reference ({n_check} images)":
                max_rel_diff(ours[:n_check], dense),
            "min_posterior=1e-4 (default) vs skimage (no threshold)": max_rel_diff(ours, ref),
        }
        if VLFEAT in codes:
            checks["VLFeat vs skimage"] = max_rel_diff(codes[VLFEAT], ref)
            # the same definition: VLFeat in float64 skips posteriors below 1e-6, as min_posterior=1e-6
            vl64 = np.stack([vl_fisher(x, fv.means_, fv.variances_, fv.weights_, improved=True)
                             for x in images[:n_check]])
            checks[f"VLFeat in float64 vs medsight at min_posterior=1e-6 ({n_check} images)"] = max_rel_diff(
                vl64, fisher_vectors(images[:n_check], *gmm, min_posterior=1e-6))

        # single steps, per image
        x = images[0]
        a = np.concatenate([x, x * x, np.ones((len(x), 1))], 1).astype(np.float32)
        w = np.ones((2 * d + 1, k), np.float32)
        code = np.abs(ours[0])
        steps = {
            "float32 GEMM [x, x^2, 1] (T, 2D+1) @ (2D+1, K)": median_ms(lambda: a @ w, 50),
            "np.sqrt of one code (2KD float64)": median_ms(lambda: np.sqrt(code), 50),
            "skimage: GaussianMixture.predict_proba (float64)":
                median_ms(lambda: sk_gmm.predict_proba(x), 50),
        }

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    blas = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info())
    threads = (f"--threads {args.threads}" if args.threads
               else f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"T={t} descriptors of D={d} per image, K={k}, {args.images} images, median of "
          f"{args.repeats} interleaved repeats")
    print(f"threads: {threads} (during the run: {blas}); {os.cpu_count()} CPUs, "
          f"load average {load}")
    print(f"GMM fit (FisherVector.fit, {sum(map(len, train))} descriptors): {fit_s:.1f} s")
    print(f"components with posterior > 1e-4 per descriptor: {hard:.3f}")
    print(vlfeat)
    print()
    print("| method | ms per image | skimage / this |")
    print("|:---|---:|---:|")
    for name, value in ms.items():
        print(f"| {name} | {value:.3f} | {ratio[name]:.2f}x |")
    print()
    print("| check (IFV codes, mean and variance parts) | max abs difference / max abs value |")
    print("|:---|---:|")
    for name, value in checks.items():
        print(f"| {name} | {value:.1e} |")
    print()
    print("| single step, one image | ms |")
    print("|:---|---:|")
    for name, value in steps.items():
        print(f"| {name} | {value:.3f} |")
    assert checks["batched vs per image"] < 1e-9  # chunks differ, so does float32 rounding
    assert checks["min_posterior=0 vs skimage (same definition)"] < 1e-5


if __name__ == "__main__":
    main()
