"""``refund-retry simulate``: the recoverability model, the simulation driving the real decision
code, the independent network-rule checker, the report and the command."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.domain.decline_codes import CardNetwork, DeclineClass
from service.domain.network_rules import DEFAULT_LIMITS
from service.simulation import engine
from service.simulation.checker import SimAttempt, count_violations
from service.simulation.engine import (
    FIXED_SCHEDULE,
    ORACLE,
    SMART_SCHEDULE,
    generate_population,
    simulate,
)
from service.simulation.model import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_DATA,
    ModelError,
    RecoverabilityModel,
    load_model,
    parse_model,
)
from service.simulation.report import SimulationReport, format_report

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "recoverability-model.json"
CLI = str(Path(sys.executable).parent / "refund-retry")
SMART, FIXED = SMART_SCHEDULE.code, FIXED_SCHEDULE.code


def data() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_MODEL_DATA)


@pytest.fixture(scope="module")
def default_run() -> SimulationReport:
    """The default model, enough payments for the comparisons to be far outside the noise."""
    return simulate(DEFAULT_MODEL, seed=1, payments=1000)


# ---- the model -----------------------------------------------------------------------------


def test_the_example_file_is_the_built_in_default_and_documents_itself() -> None:
    assert load_model(EXAMPLE) == DEFAULT_MODEL
    document = json.loads(EXAMPLE.read_text())
    assert "probability" in document["_doc"]


def test_comments_are_ignored_at_any_level() -> None:
    document = data()
    document["population"]["_note"] = "ours"
    document["declines"][0]["_why"] = "most common"
    assert parse_model(document) == DEFAULT_MODEL


def _set(document: dict[str, Any], path: str, value: object) -> None:
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    target: Any = document
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("declines.2.share", 1.5, "declines[2].share must be between 0 and 1"),
        ("declines.2.share", "0.1", "declines[2].share must be between 0 and 1"),
        ("declines.0.share", 0.5, "declines shares must sum to 1 (they sum to 1.05)"),
        ("declines.1.code", "Do Not Honor", "declines[1].code must be a lower_snake_case"),
        ("declines.0.visa_response_code", "5", "declines[0].visa_response_code must be 2"),
        ("declines.5.mc_advice_code", "2x", "declines[5].mc_advice_code must be 2 digits"),
        ("declines.5.network", "JCB", "declines[5].network must be one of VISA"),
        ("population.payments", 0, "population.payments must be a whole number between 1"),
        ("population.payments", True, "population.payments must be a whole number"),
        ("population.start", "2026-01-01", "population.start must be an ISO 8601 time with an"),
        ("population.amounts.1.currency", "XXX", "population.amounts[1].currency must be an ISO"),
        ("population.amounts.1.minor_units", 19.99, "population.amounts[1].minor_units must be"),
        ("population.time_zones.2.zone", "Mars/Olympus", "population.time_zones[2].zone 'Mars"),
        ("population.networks.0.share", -0.1, "population.networks[0].share must be between 0"),
        (
            "recovery.default.hour_multipliers",
            [1.0] * 23,
            "recovery.default.hour_multipliers needs 24 values, got 23",
        ),
        (
            "recovery.insufficient_funds.day_of_month_multipliers.30",
            -1,
            "recovery.insufficient_funds.day_of_month_multipliers[30] must be between 0 and 100",
        ),
        (
            "recovery.insufficient_funds.days_since_failure_multipliers",
            [],
            "recovery.insufficient_funds.days_since_failure_multipliers needs at least 1 entry",
        ),
        ("recovery.expired_card.fix_card_per_day", 2, "recovery.expired_card.fix_card_per_day"),
        ("recovery.card_declined", {}, "recovery.card_declined is not a decline code of any"),
        ("recovery.do_not_honor.base", 0.1, "recovery.do_not_honor.base is not a known field"),
        ("new_payment_method.decline_code", "stolen_card", "new_payment_method.decline_code must"),
        ("new_payment_method.success_probability", None, "new_payment_method.success_probability"),
        ("populations", {}, "populations is not a known field"),
    ],
)
def test_an_invalid_field_is_named_by_its_json_path(path: str, value: object, message: str) -> None:
    document = data()
    _set(document, path, value)
    with pytest.raises(ModelError) as caught:
        parse_model(document)
    assert str(caught.value).startswith(message), str(caught.value)


def test_the_default_profile_must_be_complete_and_a_code_profile_inherits_from_it() -> None:
    document = data()
    del document["recovery"]["default"]["fix_card_per_day"]
    with pytest.raises(ModelError, match=r"^recovery\.default\.fix_card_per_day is required"):
        parse_model(document)
    funds = DEFAULT_MODEL.profile("insufficient_funds")
    assert funds.pay_another_way_per_day == DEFAULT_MODEL.default_profile.pay_another_way_per_day
    assert DEFAULT_MODEL.profile("no_such_code") is DEFAULT_MODEL.default_profile


def test_model_files_that_are_not_json_or_not_there(tmp_path: Path) -> None:
    broken = tmp_path / "model.json"
    broken.write_text('{"population": ')
    with pytest.raises(ModelError, match="is not valid JSON"):
        load_model(broken)
    with pytest.raises(ModelError, match="cannot read the model file"):
        load_model(tmp_path / "missing.json")
    broken.write_text("[]")
    with pytest.raises(ModelError, match="must be a JSON object"):
        load_model(broken)


def test_the_probability_is_the_product_of_the_multipliers_capped_at_one() -> None:
    funds = DEFAULT_MODEL.profile("insufficient_funds")
    expected = 0.06 * funds.hour_multipliers[8] * funds.day_of_month_multipliers[0] * 1.0
    assert funds.probability(8, 1, 3) == pytest.approx(expected)
    last = funds.days_since_failure_multipliers[-1]
    assert funds.probability(8, 1, 500) == pytest.approx(expected * last)
    document = data()
    document["recovery"]["default"]["base_probability"] = 1.0
    assert parse_model(document).profile("generic_decline").probability(10, 1, 1) == 1.0


def test_the_schedules_are_the_seeded_ones() -> None:
    migration = (ROOT / "repository/migrations/0002_retry_plans.sql").read_text()
    for schedule in (FIXED_SCHEDULE, SMART_SCHEDULE):
        assert schedule.allowed_hours is not None
        seconds = ", ".join(str(int(i.total_seconds())) for i in schedule.intervals)
        row = (
            f"('{schedule.code}', '{schedule.description}',\n     ARRAY[{seconds}], "
            f"{schedule.max_attempts}, '{schedule.timing.value}', "
            f"{schedule.allowed_hours.start_hour}, {schedule.allowed_hours.end_hour}, "
            f"{schedule.max_span_days})"
        )
        assert row in migration


# ---- the population ------------------------------------------------------------------------


def test_the_population_is_seeded_and_a_prefix_of_a_larger_one() -> None:
    small = generate_population(DEFAULT_MODEL, 5, 50)
    assert small == generate_population(DEFAULT_MODEL, 5, 200)[:50]
    assert small != generate_population(DEFAULT_MODEL, 6, 50)


def test_the_default_population_exercises_every_network_rule() -> None:
    population = generate_population(DEFAULT_MODEL, 1, 1000)
    seen = {
        (p.network, p.decline.visa_response_code or p.decline.mc_advice_code)
        for p in population
        if p.network in (CardNetwork.VISA, CardNetwork.MASTERCARD)
    }
    for expected in [
        (CardNetwork.VISA, "R1"),  # category 1
        (CardNetwork.VISA, "43"),  # category 1
        (CardNetwork.MASTERCARD, "03"),
        (CardNetwork.MASTERCARD, "21"),
        (CardNetwork.MASTERCARD, "24"),  # wait 1 hour
        (CardNetwork.MASTERCARD, "26"),  # wait 2 days
    ]:
        assert expected in seen
    classes = {p.decline_class for p in population}
    assert classes == set(DeclineClass)


# ---- the simulation ------------------------------------------------------------------------


def test_same_seed_same_results_and_another_seed_other_results() -> None:
    first = simulate(DEFAULT_MODEL, seed=7, payments=150)
    again = simulate(DEFAULT_MODEL, seed=7, payments=150)
    other = simulate(DEFAULT_MODEL, seed=8, payments=150)
    assert first.to_json() == again.to_json()
    assert format_report(first) == format_report(again)
    assert first.to_json() != other.to_json()


def test_smart_and_fixed_break_no_network_rule(default_run: SimulationReport) -> None:
    for strategy in (SMART, FIXED, ORACLE):
        result = default_run.result(strategy)
        assert result.total_violations == 0, (strategy, dict(result.violations))
        assert result.attempts > 0
    # The oracle chooses only times the rules allow: the pre-attempt check never fires.
    assert default_run.result(ORACLE).guard_reschedules == 0


def test_the_oracle_recovers_at_least_as_much_as_either_schedule(
    default_run: SimulationReport,
) -> None:
    oracle = default_run.result(ORACLE)
    for strategy in (SMART, FIXED):
        result = default_run.result(strategy)
        assert oracle.recovered >= result.recovered
        assert sum(oracle.revenue_recovered.values()) >= sum(result.revenue_recovered.values())


def test_smart_recovers_more_than_fixed_on_the_default_model(
    default_run: SimulationReport,
) -> None:
    smart, fixed = default_run.result(SMART), default_run.result(FIXED)
    assert smart.recovered > fixed.recovered
    soft = DeclineClass.SOFT.value
    assert smart.by_class[soft][1] > fixed.by_class[soft][1]


def test_money_is_integer_minor_units_per_currency(default_run: SimulationReport) -> None:
    for result in default_run.results:
        for currency, units in result.revenue_recovered.items():
            assert type(units) is int
            assert units <= result.revenue_failed[currency]
    assert default_run.result(FIXED).revenue_failed == default_run.result(SMART).revenue_failed


def test_hard_declines_are_never_retried_and_network_waits_are_kept() -> None:
    population = generate_population(DEFAULT_MODEL, 1, 1000)
    for schedule in (SMART_SCHEDULE, FIXED_SCHEDULE):
        runner = engine.ScheduleSimulation(DEFAULT_MODEL, 1, DEFAULT_LIMITS, schedule)
        results = asyncio.run(runner.run(population, None))
        waits = 0
        for result in results:
            payment = result.payment
            retries = [a for a in result.attempts if a.source != "FAILURE"]
            if payment.decline_class is DeclineClass.HARD:
                assert retries == []
            if payment.network is CardNetwork.MASTERCARD and payment.decline.mc_advice_code == "26":
                waits += 1
                for attempt in retries:
                    assert attempt.at - payment.first_failed_at >= timedelta(days=2)
        assert waits > 0


def test_the_smart_schedule_learns_from_its_own_attempts() -> None:
    population = generate_population(DEFAULT_MODEL, 3, 200)
    runner = engine.ScheduleSimulation(DEFAULT_MODEL, 3, DEFAULT_LIMITS, SMART_SCHEDULE)
    results = asyncio.run(runner.run(population, None))
    soft_retries = sum(
        1 for r in results for a in r.attempts if a.retry_of_class == DeclineClass.SOFT.value
    )
    later = max(p.horizon_end for p in population) + timedelta(days=1)
    assert soft_retries > 0
    assert runner.stats(later)[DeclineClass.SOFT].overall.attempts == soft_retries


def _customers_fix_their_cards(success: float) -> RecoverabilityModel:
    document = data()
    document["declines"] = [{"code": "expired_card", "visa_response_code": "54", "share": 1.0}]
    document["recovery"] = {
        "default": document["recovery"]["default"]
        | {"base_probability": 0.0, "fix_card_per_day": 1.0, "pay_another_way_per_day": 0.0}
    }
    document["new_payment_method"] = {"success_probability": success}
    return parse_model(document)


def test_a_customer_who_fixes_their_card_is_recovered_on_the_new_method() -> None:
    model = _customers_fix_their_cards(1.0)
    report = simulate(model, seed=2, payments=40)
    for result in report.results:
        assert result.recovered == 40
        assert result.recovered_with_new_method == 40
        assert result.attempts == 40  # one charge each, on the new card, when it is added
        assert result.total_violations == 0
    population = generate_population(model, 2, 40)
    runner = engine.ScheduleSimulation(model, 2, DEFAULT_LIMITS, SMART_SCHEDULE)
    for outcome in asyncio.run(runner.run(population, None)):
        payment = outcome.payment
        failure, charge = outcome.attempts
        assert (failure.card, failure.approved) == (payment.card, False)
        assert (charge.card, charge.approved, charge.at) == (payment.new_card, True, payment.fix_at)


def test_a_failing_new_method_is_retried_on_the_schedule() -> None:
    report = simulate(_customers_fix_their_cards(0.5), seed=4, payments=60)
    smart = report.result(SMART)
    assert smart.recovered_with_new_method == smart.recovered
    assert smart.attempts > smart.recovered  # declines of the new card were retried
    assert smart.total_violations == 0


def test_customers_who_never_fix_their_card_leave_the_plan_waiting() -> None:
    document = data()
    document["declines"] = [{"code": "expired_card", "share": 1.0}]
    document["recovery"] = {
        "default": document["recovery"]["default"]
        | {"fix_card_per_day": 0.0, "pay_another_way_per_day": 0.0}
    }
    report = simulate(parse_model(document), seed=1, payments=30)
    for result in report.results:
        assert (result.recovered, result.attempts, result.still_open) == (0, 0, 30)


# ---- the independent checker ---------------------------------------------------------------

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)


def _attempt(
    hours: float, network: CardNetwork, approved: bool = False, **codes: str
) -> SimAttempt:
    return SimAttempt(T0 + timedelta(hours=hours), "pm_1", network, approved, **codes)


def test_the_checker_finds_every_kind_of_violation() -> None:
    visa, mastercard = CardNetwork.VISA, CardNetwork.MASTERCARD
    category1 = [_attempt(0, visa, visa_response_code="R1"), _attempt(24, visa)]
    assert count_violations(category1) == {"visa.category1": 1}
    mac03 = [_attempt(0, mastercard, mc_advice_code="03"), _attempt(24, mastercard)]
    assert count_violations(mac03) == {"mastercard.mac.03": 1}
    mac21_late = [_attempt(0, mastercard, mc_advice_code="21"), _attempt(31 * 24, mastercard)]
    assert count_violations(mac21_late) == {}
    wait = [_attempt(0, mastercard, mc_advice_code="26"), _attempt(47, mastercard)]
    assert count_violations(wait) == {"mastercard.mac.wait": 1}
    waited = [_attempt(0, mastercard, mc_advice_code="26"), _attempt(48, mastercard)]
    assert count_violations(waited) == {}
    sixteen = [_attempt(0, visa, visa_response_code="51")]
    sixteen += [_attempt(10 * i, visa, visa_response_code="51") for i in range(1, 17)]
    assert count_violations(sixteen) == {"visa.reattempt_limit": 1}
    many = [_attempt(i, CardNetwork.AMEX) for i in range(21)]
    assert count_violations(many) == {"card.daily_limit": 1}
    other_card = [category1[0], SimAttempt(T0 + timedelta(days=1), "pm_2", visa, True)]
    assert count_violations(other_card) == {}


# ---- the command ---------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFUND_RETRY_")}
    return subprocess.run(
        [CLI, "simulate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_prints_the_table() -> None:
    done = _cli("--payments", "200", "--seed", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("strategy"))
    assert "recovered" in header
    assert "violations" in header
    for strategy in (SMART, FIXED, ORACLE):
        row = next(line for line in lines if line.startswith(strategy + " "))
        assert re.search(r"\d+\.\d%", row)
    assert "network-rule violations (independent check of every attempt): none" in done.stdout
    assert "simulated in" in done.stderr


def test_the_command_prints_json_and_reads_a_model_file(tmp_path: Path) -> None:
    done = _cli("--payments", "50", "--seed", "3", "--json", "--model", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [s["strategy"] for s in report["strategies"]] == [SMART, FIXED, ORACLE]
    assert report["payments"] == 50
    assert all(
        type(v) is int for v in report["strategies"][0]["revenue_recovered_minor_units"].values()
    )
    bad = tmp_path / "model.json"
    document = data()
    document["declines"][2]["share"] = 2
    bad.write_text(json.dumps(document))
    refused = _cli("--model", str(bad))
    assert refused.returncode == 2
    assert "declines[2].share must be between 0 and 1" in refused.stderr
