using FsCheck;
using FsCheck.Fluent;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Core.Tests.Sagas;

/// <summary>
/// Random sagas (1-6 branches, chains and DAGs, with and without a pivot) driven through random
/// worlds: successes, definitive failures, unknown outcomes, lost calls, late and duplicate answers,
/// timers at any time, crashes and operator actions; then every call succeeds so that liveness can
/// be checked. <see cref="SagaSimulation"/> checks the per-decision invariants.
/// </summary>
public sealed class SagaMachinePropertyTests
{
    private const string Compensate = ProtocolNames.Compensate;

    // TREATY_PROPERTY_CASES raises the count for a longer soak; the default keeps the suite quick.
    private static readonly int CaseCount =
        int.TryParse(Environment.GetEnvironmentVariable("TREATY_PROPERTY_CASES"), out var count) && count > 0 ? count : 400;

    private static readonly Config Cases = Config.QuickThrowOnFailure.WithMaxTest(CaseCount);

    private static Property Holds(SagaSimulation simulation) =>
        Prop.Label(simulation.Violations.Count == 0, string.Join(Environment.NewLine, simulation.Violations.Take(5)));

    [Fact]
    public void Generator_ProducesOnlyValidSagas()
    {
        var machine = new SagaMachine();
        Check.One(Cases, Prop.ForAll(SagaGen.Specs(allowPivot: true).ToArbitrary(), spec =>
        {
            var errors = machine.Validate(spec).ToList();
            return Prop.Label(errors.Count == 0, string.Join("; ", errors));
        }));
    }

    [Fact]
    public void Decide_AnyWorldWithoutPivot_EndsCommittedOrFullyCompensated()
    {
        Check.One(Cases, Prop.ForAll(SagaGen.Cases(allowPivot: false).ToArbitrary(), @case =>
        {
            var simulation = new SagaSimulation(@case.Spec, @case.Seed);
            simulation.RunChaosThenCalm(@case.Script);
            simulation.CheckOutcome();
            return Holds(simulation);
        }));
    }

    [Fact]
    public void Decide_AnyWorldWithOptionalPivot_EndsCommittedOrFullyCompensated()
    {
        Check.One(Cases, Prop.ForAll(SagaGen.Cases(allowPivot: true).ToArbitrary(), @case =>
        {
            var simulation = new SagaSimulation(@case.Spec, @case.Seed);
            simulation.RunChaosThenCalm(@case.Script);
            simulation.CheckOutcome();
            return Holds(simulation);
        }));
    }

    [Fact]
    public void Decide_CompensationThatNeverSucceeds_IsRetriedForeverAndTheSagaStaysStuck()
    {
        var worlds =
            from spec in SagaGen.Specs(allowPivot: false, minBranches: 2)
            from seed in Gen.Choose(0, int.MaxValue - 1)
            from definitive in Gen.Elements(false, true)
            select (spec, seed, definitive);
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(Math.Max(200, CaseCount / 2)), Prop.ForAll(worlds.ToArbitrary(), world =>
        {
            var simulation = new SagaSimulation(world.spec, world.seed);

            // Let one action succeed, then abort: there is something to undo.
            simulation.AnswerNext(_ => BranchOutcome.Success(200, "{}"));
            simulation.State.Status.ShouldBe(TransactionStatus.Running);
            simulation.Apply(new AdminAbort("prop", null));
            simulation.State.Status.ShouldBe(TransactionStatus.Aborting);

            var lastCompensations = 0;
            for (var step = 0; step < 400; step++)
            {
                var before = simulation.CompensateInvocations;
                var answered = simulation.AnswerNext(call => call.Op == Compensate
                    ? world.definitive && step % 2 == 0 ? BranchOutcome.Failure(400, "refused") : BranchOutcome.Unknown(500, "boom")
                    : BranchOutcome.Success(200, "{}"));
                if (!answered)
                {
                    simulation.AdvanceAndFire();
                }

                if (step >= 300)
                {
                    lastCompensations += simulation.CompensateInvocations - before;
                }

                if (simulation.State.IsTerminal)
                {
                    break;
                }
            }

            var state = simulation.State;
            var ok = simulation.Violations.Count == 0
                && state.Status == TransactionStatus.Aborting
                && state.Stuck
                && state.NextWakeAt is not null
                && lastCompensations > 0
                && simulation.Alerts == 1;
            return Prop.Label(ok,
                $"status {state.Status}, stuck {state.Stuck}, wake {state.NextWakeAt}, compensations in the last 100 steps {lastCompensations}, " +
                $"alerts {simulation.Alerts}; {string.Join("; ", simulation.Violations.Take(3))} | {SagaSimulation.Describe(state)}");
        }));
    }

    [Fact]
    public void Simulation_CoversCommitsAbortsAndStuckRuns()
    {
        // The properties above would pass vacuously if the worlds never aborted or never committed.
        var outcomes = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var @case in SagaGen.Cases(allowPivot: true).Sample(300))
        {
            var simulation = new SagaSimulation(@case.Spec, @case.Seed);
            simulation.RunChaosThenCalm(@case.Script);
            Count(simulation.State.Status.ToWire());
            if (simulation.EverStuck)
            {
                Count("stuck");
            }

            if (simulation.CompensateInvocations > 0 && simulation.State.Status == TransactionStatus.Aborted)
            {
                Count("compensated");
            }

            if (@case.Spec.Branches.Any(b => b.Pivot) && SagaMachine.PivotPassed(simulation.State))
            {
                Count("pivot-passed");
            }
        }

        var seen = string.Join(", ", outcomes.Select(o => $"{o.Key} {o.Value}"));
        // Typical counts out of 300: committed ~90, aborted ~210, compensated ~180, stuck ~110, pivot passed ~25.
        outcomes.GetValueOrDefault("committed").ShouldBeGreaterThan(30, seen);
        outcomes.GetValueOrDefault("aborted").ShouldBeGreaterThan(60, seen);
        outcomes.GetValueOrDefault("compensated").ShouldBeGreaterThan(50, seen);
        outcomes.GetValueOrDefault("stuck").ShouldBeGreaterThan(10, seen);
        outcomes.GetValueOrDefault("pivot-passed").ShouldBeGreaterThan(5, seen);

        void Count(string key) => outcomes[key] = outcomes.GetValueOrDefault(key) + 1;
    }
}
