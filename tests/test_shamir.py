"""Shamir secret sharing: any t shares give the secret, t - 1 say nothing, bad shares are caught."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from fedalign.shamir import PRIME, Share, SharingError, combine, split

SECRET = hashlib.sha256(b"a seed").digest()
COEFFICIENTS = hashlib.sha256(b"a node's private coefficient seed").digest()


def test_every_t_of_n_shares_give_the_secret_back() -> None:
    shares = split(SECRET, 5, 3, COEFFICIENTS, b"self")
    assert [s.x for s in shares] == [1, 2, 3, 4, 5]
    for subset in itertools.combinations(shares, 3):
        assert combine(list(subset), 3) == SECRET
    assert combine(shares, 3) == SECRET  # the two beyond t are checked, and agree


def test_fewer_than_t_shares_are_refused() -> None:
    shares = split(SECRET, 5, 3, COEFFICIENTS, b"self")
    with pytest.raises(SharingError, match="2 share"):
        combine(shares[:2], 3)


def test_t_minus_one_shares_are_consistent_with_every_secret() -> None:
    """Whatever secret one guesses, exactly one polynomial passes through it and the t - 1 shares held:
    a third share completing it exists, so the held shares single out no secret."""
    held = split(SECRET, 5, 3, COEFFICIENTS, b"self")[:2]
    for guess in (bytes(32), b"\xff" * 32, hashlib.sha256(b"another").digest()):
        through_guess = [Share(0, int.from_bytes(guess, "big")), *held]
        completion = Share(5, _lagrange(through_guess, 5))
        assert combine([*held, completion], 3) == guess


def test_a_corrupted_share_beyond_t_is_detected() -> None:
    shares = split(SECRET, 4, 2, COEFFICIENTS, b"self")
    shares[3] = Share(4, (shares[3].y + 1) % PRIME)
    with pytest.raises(SharingError, match="share 4 does not lie"):
        combine(shares, 2)


def test_repeated_indices_are_refused() -> None:
    shares = split(SECRET, 4, 2, COEFFICIENTS, b"self")
    with pytest.raises(SharingError, match="repeat"):
        combine([shares[0], shares[0]], 2)


def test_sharing_is_deterministic_per_label_and_independent_across_labels() -> None:
    assert split(SECRET, 4, 3, COEFFICIENTS, b"self") == split(SECRET, 4, 3, COEFFICIENTS, b"self")
    other = split(SECRET, 4, 3, COEFFICIENTS, b"pair/beta")
    assert [s.y for s in other] != [s.y for s in split(SECRET, 4, 3, COEFFICIENTS, b"self")]


@pytest.mark.parametrize(("n", "t"), [(3, 0), (3, 4), (0, 0)])
def test_impossible_thresholds_are_refused(n: int, t: int) -> None:
    with pytest.raises(SharingError, match="threshold"):
        split(SECRET, n, t, COEFFICIENTS, b"self")


def test_share_bytes_round_trip_and_out_of_field_values_are_refused() -> None:
    share = split(SECRET, 3, 2, COEFFICIENTS, b"self")[1]
    assert Share.from_bytes(share.x, share.value_bytes()) == share
    with pytest.raises(SharingError, match="outside the field"):
        Share.from_bytes(2, PRIME.to_bytes(66, "big"))
    with pytest.raises(SharingError, match="66 bytes"):
        Share.from_bytes(2, b"\x00" * 65)


def _lagrange(points: list[Share], at: int) -> int:
    """f(at) through ``points``, written out independently of the module under test."""
    total = 0
    for p in points:
        term = p.y
        for q in points:
            if q is not p:
                term = term * (at - q.x) * pow(p.x - q.x, -1, PRIME) % PRIME
        total = (total + term) % PRIME
    return total
