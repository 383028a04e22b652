"""Shamir's threshold secret sharing (Shamir 1979, "How to share a secret") of 32-byte secrets.

A secret s becomes the constant term of a polynomial f of degree t - 1 over the prime field GF(p) with
p = 2^521 - 1 (a Mersenne prime, so every 256-bit secret is a field element); share k is (k, f(k)) for
k = 1..n. Any t shares give f, hence s = f(0), by Lagrange interpolation; any t - 1 shares are consistent
with every possible secret, each through exactly one polynomial, so they say nothing about it.

The coefficients come from the caller (`coefficient_seed`), expanded by HKDF, rather than from fresh
randomness: a node that masks one upload twice (a re-run step) must hand out the same shares, or a holder
could end up with points of two different polynomials of one secret. The seed must be a secret of the
node's own, never revealed (`fedalign.secagg_shares` derives it from the node's private key).

Written here rather than taken from pycryptodome's ``Crypto.Protocol.SecretSharing``: that one shares
16-byte secrets in GF(2^128) with its own randomness (no deterministic coefficients), and would add a
second cryptography library beside ``cryptography`` for some fifty lines of arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from fedalign import secagg_limits

PRIME = (1 << 521) - 1
# A share's value as bytes: 521 bits round up to 66 bytes (the wire's size, from `fedalign.secagg_limits`).
SHARE_BYTES = secagg_limits.SHARE_BYTES
assert PRIME.bit_length() <= 8 * SHARE_BYTES
SECRET_BYTES = 32
# Share indices travel as two bytes; far more than the encoding's summand bound would ever need.
MAX_SHARES = (1 << 16) - 1


class SharingError(ValueError):
    """Shares that cannot give a secret: too few, repeated, inconsistent, or out of range."""


@dataclass(frozen=True)
class Share:
    """The point (x, f(x)) of a sharing polynomial; x in 1..n names the holder's place in the roster."""

    x: int
    y: int

    def value_bytes(self) -> bytes:
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, raw: bytes) -> Share:
        if len(raw) != SHARE_BYTES:
            raise SharingError(f"a share value is {SHARE_BYTES} bytes; got {len(raw)}")
        y = int.from_bytes(raw, "big")
        if not 1 <= x <= MAX_SHARES or y >= PRIME:
            raise SharingError(f"share ({x}, ...) lies outside the field")
        return cls(x, y)


def split(secret: bytes, n: int, t: int, coefficient_seed: bytes, label: bytes) -> list[Share]:
    """``n`` shares of ``secret``, any ``t`` of which give it back: [(1, f(1)), ..., (n, f(n))].

    ``label`` tells apart the secrets shared under one ``coefficient_seed`` (each needs its own
    polynomial: two secrets sharing coefficients would let a holder subtract them out).
    """
    if len(secret) != SECRET_BYTES:
        raise SharingError(f"a secret is {SECRET_BYTES} bytes; got {len(secret)}")
    if not 1 <= t <= n <= MAX_SHARES:
        raise SharingError(f"a threshold must satisfy 1 <= t <= n <= {MAX_SHARES}; got t={t}, n={n}")
    # 64 bytes per coefficient, reduced mod p: the bias against uniform is below 2^-500.
    stream = HKDFExpand(hashes.SHA512(), 64 * max(t - 1, 1), info=b"fedalign-shamir-v1" + label).derive(
        coefficient_seed
    )
    coefficients = [int.from_bytes(secret, "big")] + [
        int.from_bytes(stream[64 * k : 64 * (k + 1)], "big") % PRIME for k in range(t - 1)
    ]
    return [Share(x, _evaluate(coefficients, x)) for x in range(1, n + 1)]


def combine(shares: Sequence[Share], t: int) -> bytes:
    """The secret of ``shares``: interpolated from the first ``t``, checked against every other one.

    Raises :class:`SharingError` for fewer than ``t`` shares, repeated indices, shares that do not lie on
    one polynomial of degree t - 1 (a corrupted or mismatched share), or a result that is not a 32-byte
    secret.
    """
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise SharingError(f"shares repeat an index: {sorted(xs)}")
    if len(shares) < t:
        raise SharingError(f"{len(shares)} share(s) cannot give a secret shared with threshold {t}")
    basis, rest = shares[:t], shares[t:]
    for extra in rest:
        if _interpolate(basis, extra.x) != extra.y:
            raise SharingError(f"share {extra.x} does not lie on the polynomial of the others")
    secret = _interpolate(basis, 0)
    if secret >> (8 * SECRET_BYTES):
        raise SharingError("the shares give a value that is no 32-byte secret: they do not belong together")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):  # Horner's rule
        value = (value * x + c) % PRIME
    return value


def _interpolate(points: Sequence[Share], at: int) -> int:
    """f(at) for the polynomial of degree len(points) - 1 through ``points`` (Lagrange's formula)."""
    total = 0
    for i, p in enumerate(points):
        numerator, denominator = 1, 1
        for j, q in enumerate(points):
            if i != j:
                numerator = numerator * (at - q.x) % PRIME
                denominator = denominator * (p.x - q.x) % PRIME
        total = (total + p.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total
