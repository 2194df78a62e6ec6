using System.Collections.Immutable;
using System.Text;
using FsCheck;
using FsCheck.Fluent;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Tests.Support;

namespace Treaty.Core.Tests.Sagas;

/// <summary>A generated saga definition and the script of what the world does to it.</summary>
public sealed record SagaCase(TransactionSpec Spec, ImmutableArray<int> Script, int Seed)
{
    public override string ToString()
    {
        var text = new StringBuilder();
        text.Append(System.Globalization.CultureInfo.InvariantCulture, $"seed {Seed}, timeout {Spec.TimeoutMs?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none"}, retry {Spec.Retry}; ");
        foreach (var b in Spec.Branches)
        {
            text.Append(System.Globalization.CultureInfo.InvariantCulture,
                $"{b.Name}[{string.Join(",", b.DependsOn)}]{(b.Pivot ? " PIVOT" : "")}{(b.UrlOf(ProtocolNames.Compensate) is null ? " no-comp" : "")}{(b.Retry is { } r ? $" attempts={r.MaxAttempts}" : "")}; ");
        }

        text.Append(System.Globalization.CultureInfo.InvariantCulture, $"script({Script.Length}): {string.Join(" ", Script)}");
        return text.ToString();
    }
}

/// <summary>Generators of valid saga definitions and world scripts.</summary>
internal static class SagaGen
{
    public static Gen<TransactionSpec> Specs(bool allowPivot, int minBranches = 1) =>
        from n in Gen.Choose(minBranches, 6)
        from dag in Gen.Elements(false, true)
        from masks in Gen.ArrayOf(Gen.Choose(0, 63), n)
        from pivotPick in Gen.Choose(0, 11)
        from keepCompensate in Gen.ArrayOf(Gen.Elements(false, true), n)
        from ownRetry in Gen.ArrayOf(Gen.Choose(0, 4), n)
        from policy in Policies
        from timeout in Gen.Frequency((3, Gen.Constant(0)), (1, Gen.Choose(50, 3000)))
        from callTimeout in Gen.Choose(100, 2000)
        select Build(n, dag, masks, allowPivot ? pivotPick : -1, keepCompensate, ownRetry, policy, timeout, callTimeout);

    private static Gen<RetryPolicy> Policies =>
        from attempts in Gen.Choose(1, 4)
        from initial in Gen.Choose(0, 100)
        from spread in Gen.Choose(0, 400)
        select new RetryPolicy(attempts, initial, initial + spread);

    public static Gen<SagaCase> Cases(bool allowPivot) =>
        from spec in Specs(allowPivot)
        from length in Gen.Choose(0, 300)
        from script in Gen.ArrayOf(Gen.Choose(0, 9_999), length)
        from seed in Gen.Choose(0, int.MaxValue - 1)
        select new SagaCase(spec, [.. script], seed);

    private static TransactionSpec Build(
        int n, bool dag, int[] masks, int pivotPick, bool[] keepCompensate, int[] ownRetry, RetryPolicy policy, int timeout, int callTimeout)
    {
        var deps = new List<int>[n];
        for (var i = 0; i < n; i++)
        {
            deps[i] = dag
                ? [.. Enumerable.Range(0, i).Where(j => (masks[i] >> j & 1) == 1)]
                : i == 0 ? [] : [i - 1];
        }

        var ancestors = new HashSet<int>[n];
        for (var i = 0; i < n; i++)
        {
            ancestors[i] = [];
            foreach (var j in deps[i])
            {
                ancestors[i].Add(j);
                ancestors[i].UnionWith(ancestors[j]);
            }
        }

        // A pivot must be ordered against every other branch: each one runs before it or after it.
        var candidates = Enumerable.Range(0, n)
            .Where(p => Enumerable.Range(0, n).All(q => q == p || ancestors[p].Contains(q) || ancestors[q].Contains(p)))
            .ToList();
        var pivot = pivotPick >= 0 && pivotPick < n && candidates.Count > 0 ? candidates[pivotPick % candidates.Count] : -1;

        var branches = new List<BranchSpec>();
        for (var i = 0; i < n; i++)
        {
            var forwardOnly = pivot >= 0 && (i == pivot || ancestors[i].Contains(pivot));
            var retry = ownRetry[i] == 0 ? policy with { MaxAttempts = 1 + (policy.MaxAttempts % 3) } : null;
            branches.Add(SagaSpecs.Branch(
                $"b{i}",
                [.. deps[i].Select(j => $"b{j}")],
                pivot: i == pivot,
                compensate: !forwardOnly || keepCompensate[i],
                retry: retry,
                timeoutMs: callTimeout));
        }

        return SagaSpecs.Saga(branches, timeout == 0 ? null : timeout, policy, gid: "prop");
    }
}

/// <summary>
/// Drives the pure saga machine through a simulated world (a clock, calls in flight, late and
/// duplicate answers, crashes) and checks the machine's invariants after every decision.
/// </summary>
internal sealed class SagaSimulation
{
    private const string Action = ProtocolNames.Action;
    private const string Compensate = ProtocolNames.Compensate;

    private readonly SagaMachine _machine = new();
    private readonly IRandomSource _random;
    private readonly List<InvokeOperation> _outstanding = [];
    private readonly List<OperationCompleted> _late = [];
    private readonly int?[] _firstCompensateInvoked;
    private readonly int?[] _compensateSucceeded;
    private int _sequence;

    public SagaSimulation(TransactionSpec spec, int seed)
    {
        _random = new SeededRandomSource(seed);
        Now = SagaSpecs.T0;
        State = _machine.Create(spec, "fingerprint", Now);
        _firstCompensateInvoked = new int?[spec.Branches.Length];
        _compensateSucceeded = new int?[spec.Branches.Length];
        Apply(new Submitted());
    }

    public TransactionState State { get; private set; }

    public DateTimeOffset Now { get; private set; }

    public List<string> Violations { get; } = [];

    public int Alerts { get; private set; }

    public int Finishes { get; private set; }

    public int CompensateInvocations { get; private set; }

    public bool EverStuck { get; private set; }

    public IReadOnlyList<InvokeOperation> Outstanding => _outstanding;

    private TransactionSpec Spec => State.Spec;

    /// <summary>Plays the script (chaos), then answers every call with success until the saga ends.</summary>
    public void RunChaosThenCalm(ImmutableArray<int> script, int calmSteps = 2000)
    {
        var cursor = 0;
        int Next(int modulo) => cursor < script.Length ? script[cursor++] % modulo : 0;

        while (cursor < script.Length && !State.IsTerminal)
        {
            var roll = Next(1000);
            switch (roll)
            {
                case < 500 when _outstanding.Count > 0:
                {
                    var call = _outstanding[Next(_outstanding.Count)];
                    _outstanding.Remove(call);
                    var completed = new OperationCompleted(call.Branch, call.Op, call.Attempt, Outcome(Next(100)));
                    Apply(completed);
                    if (Next(5) == 0)
                    {
                        _late.Add(completed with { Outcome = Outcome(Next(100)) }); // delivered again later
                    }

                    break;
                }

                case < 580 when _late.Count > 0:
                    Apply(_late[Next(_late.Count)]);
                    break;

                case < 720:
                    AdvanceAndFire();
                    break;

                case < 800:
                    Now += TimeSpan.FromMilliseconds(Next(300));
                    Apply(new TimerFired());
                    break;

                case < 850:
                    Crash(late: true);
                    break;

                case < 900:
                    Apply(new AdminRetry("prop"));
                    break;

                case < 905:
                    Apply(new AdminAbort("prop", "generated"));
                    break;

                case < 950 when _outstanding.Count > 0:
                    // The call's task is lost: its answer never arrives; only the watchdog can notice.
                    _outstanding.RemoveAt(Next(_outstanding.Count));
                    break;

                default:
                    AdvanceAndFire();
                    break;
            }
        }

        RunCalm(calmSteps);
    }

    /// <summary>Every call succeeds; the clock jumps to each wake-up. The saga must end.</summary>
    public void RunCalm(int maxSteps)
    {
        for (var step = 0; step < maxSteps && !State.IsTerminal; step++)
        {
            if (_outstanding.Count > 0)
            {
                var call = _outstanding[0];
                _outstanding.RemoveAt(0);
                Apply(new OperationCompleted(call.Branch, call.Op, call.Attempt, BranchOutcome.Success(200, "{}")));
            }
            else if (State.NextWakeAt is not null)
            {
                AdvanceAndFire();
            }
            else
            {
                Violate("stalled: not terminal, no call outstanding and no wake-up asked for");
                return;
            }
        }

        if (!State.IsTerminal)
        {
            Violate($"not terminal after {maxSteps} calm steps");
        }
    }

    public void AdvanceAndFire()
    {
        if (State.NextWakeAt is { } wake && wake > Now)
        {
            Now = wake;
        }

        Apply(new TimerFired());
    }

    /// <summary>The coordinator restarts: calls in flight are forgotten (their answers may still come, late).</summary>
    public void Crash(bool late)
    {
        if (late)
        {
            _late.AddRange(_outstanding.Select(c => new OperationCompleted(c.Branch, c.Op, c.Attempt, BranchOutcome.Success(200, null))));
        }

        _outstanding.Clear();
        Apply(new Resumed());
    }

    /// <summary>Answers the oldest outstanding call with what <paramref name="outcome"/> says.</summary>
    public bool AnswerNext(Func<InvokeOperation, BranchOutcome> outcome)
    {
        if (_outstanding.Count == 0)
        {
            return false;
        }

        var call = _outstanding[0];
        _outstanding.RemoveAt(0);
        Apply(new OperationCompleted(call.Branch, call.Op, call.Attempt, outcome(call)));
        return true;
    }

    private static BranchOutcome Outcome(int roll) => roll switch
    {
        < 62 => BranchOutcome.Success(200, "{}"),
        < 74 => BranchOutcome.Failure(409, "declined"),
        < 95 => BranchOutcome.Unknown(503, "unavailable"),
        _ => BranchOutcome.Unknown(null, "timeout"),
    };

    public void Apply(TransactionEvent @event)
    {
        var before = State;
        var decision = _machine.Decide(before, @event, new DecisionContext(Now, _random));
        _sequence++;
        State = decision.Next;
        CheckDecision(before, @event, decision);
        EverStuck |= State.Stuck;
        foreach (var command in decision.Commands)
        {
            switch (command)
            {
                case InvokeOperation invoke:
                    _outstanding.Add(invoke);
                    break;
                case Alert:
                    Alerts++;
                    break;
                case Finish:
                    Finishes++;
                    break;
            }
        }
    }

    private void Violate(string what) =>
        Violations.Add($"#{_sequence} at +{(Now - SagaSpecs.T0).TotalMilliseconds}ms: {what} | state {Describe(State)}");

    private static bool IsStale(TransactionState state, OperationCompleted completed)
    {
        if (completed.Branch is not { } branch || branch < 0 || branch >= state.Branches.Length)
        {
            return true;
        }

        var op = state.Branches[branch].Ops.FirstOrDefault(o => o.Op == completed.Op);
        return op is null || op.Status != OpStatus.InFlight || op.Attempts != completed.Attempt;
    }

    private bool Settled(TransactionState state, int index)
    {
        var action = state.Branches[index].Op(Action);
        return action.Status != OpStatus.InFlight
            && (!action.MayHaveApplied() || state.Branches[index].Op(Compensate).Status == OpStatus.Succeeded);
    }

    private IEnumerable<int> Dependents(int index) =>
        Enumerable.Range(0, Spec.Branches.Length).Where(j => Spec.Branches[j].DependsOn.Contains(Spec.Branches[index].Name));

    private void CheckDecision(TransactionState before, TransactionEvent @event, Decision decision)
    {
        var next = decision.Next;
        var unchanged = ReferenceEquals(next, before) && decision.Commands.IsEmpty && decision.Journal.IsEmpty;
        if (before.IsTerminal && !unchanged)
        {
            Violate($"a terminal state changed on {@event}");
        }

        if (@event is OperationCompleted completed && IsStale(before, completed) && !unchanged)
        {
            Violate($"a stale or duplicate answer changed the state: {completed}");
        }

        if (@event is AdminAbort && !_machine.CanAbort(before) && !unchanged)
        {
            Violate("a refused abort changed the state");
        }

        if (@event is AdminAbort && _machine.CanAbort(before) && next.Status is not (TransactionStatus.Aborting or TransactionStatus.Aborted))
        {
            Violate("an allowed abort was not honoured");
        }

        if ((next.NextWakeAt is null) != next.IsTerminal)
        {
            Violate($"NextWakeAt is {(next.NextWakeAt is null ? "null" : "set")} while the status is {next.Status}");
        }

        if (@event is TimerFired && next.NextWakeAt is { } wake && wake <= Now)
        {
            Violate($"after a timer the next wake-up {wake:O} is not in the future (a busy loop)");
        }

        var allowed = before.Status switch
        {
            TransactionStatus.Pending => next.Status is TransactionStatus.Pending or TransactionStatus.Running or TransactionStatus.Committed or TransactionStatus.Aborted,
            TransactionStatus.Running => next.Status is not (TransactionStatus.Pending or TransactionStatus.Prepared),
            TransactionStatus.Aborting => next.Status is TransactionStatus.Aborting or TransactionStatus.Aborted,
            _ => next.Status == before.Status,
        };
        if (!allowed)
        {
            Violate($"status went from {before.Status} to {next.Status}");
        }

        if (next.Stuck && next.IsTerminal)
        {
            Violate("a terminal transaction is stuck");
        }

        var finishes = decision.Commands.OfType<Finish>().ToList();
        var finished = !before.IsTerminal && next.IsTerminal;
        if (finishes.Count != (finished ? 1 : 0) || (finished && finishes[0].Status != next.Status))
        {
            Violate($"Finish commands {finishes.Count} do not match {before.Status} -> {next.Status}");
        }

        if (next.Status == TransactionStatus.Committed && before.Status != TransactionStatus.Committed)
        {
            if (next.Branches.Any(b => b.Op(Action).Status != OpStatus.Succeeded))
            {
                Violate("committed although an action did not succeed");
            }

            if (CompensateInvocations > 0)
            {
                Violate("committed after a compensation was invoked");
            }
        }

        for (var i = 0; i < next.Branches.Length; i++)
        {
            var was = before.Branches[i].Op(Compensate).Status;
            if (was != OpStatus.Succeeded && next.Branches[i].Op(Compensate).Status == OpStatus.Succeeded)
            {
                _compensateSucceeded[i] = _sequence;
            }
        }

        var invoked = new HashSet<(int, string)>();
        foreach (var invoke in decision.Commands.OfType<InvokeOperation>())
        {
            CheckInvoke(before, next, @event, invoke, invoked);
        }
    }

    private void CheckInvoke(TransactionState before, TransactionState next, TransactionEvent @event, InvokeOperation invoke, HashSet<(int, string)> invoked)
    {
        var branch = invoke.Branch ?? throw new InvalidOperationException("A saga has no transaction-level operation.");
        if (!invoked.Add((branch, invoke.Op)))
        {
            Violate($"{invoke.BranchName}.{invoke.Op} invoked twice in one decision");
        }

        var op = next.Branches[branch].Op(invoke.Op);
        var previous = before.Branches[branch].Op(invoke.Op);
        if (op.Status != OpStatus.InFlight || op.Attempts != invoke.Attempt || invoke.Attempt != previous.Attempts + 1)
        {
            Violate($"{invoke.BranchName}.{invoke.Op}#{invoke.Attempt} but the op is {op.Status} with {op.Attempts} attempts (before {previous.Attempts})");
        }

        if (previous.Status is OpStatus.Succeeded or OpStatus.Failed or OpStatus.Exhausted)
        {
            Violate($"{invoke.BranchName}.{invoke.Op} invoked again after it was {previous.Status}");
        }

        if (previous.Status == OpStatus.Waiting && @event is not AdminRetry && previous.NextAttemptAt > Now)
        {
            Violate($"{invoke.BranchName}.{invoke.Op} retried before it was due ({previous.NextAttemptAt:O})");
        }

        if (invoke.Url != Spec.Branches[branch].UrlOf(invoke.Op))
        {
            Violate($"{invoke.BranchName}.{invoke.Op} invoked at the wrong URL {invoke.Url}");
        }

        if (invoke.Op == Action)
        {
            if (CompensateInvocations > 0)
            {
                Violate($"{invoke.BranchName}.action invoked after a compensation was invoked");
            }

            if (next.Status != TransactionStatus.Running)
            {
                Violate($"{invoke.BranchName}.action invoked while {next.Status}");
            }

            foreach (var dependency in Spec.Branches[branch].DependsOn)
            {
                var j = Spec.Branches.IndexOf(Spec.Branches.Single(b => b.Name == dependency));
                if (next.Branches[j].Op(Action).Status != OpStatus.Succeeded)
                {
                    Violate($"{invoke.BranchName}.action invoked before its dependency {dependency} succeeded");
                }
            }

            return;
        }

        CompensateInvocations++;
        _firstCompensateInvoked[branch] ??= _sequence;
        var action = next.Branches[branch].Op(Action);
        if (next.Status != TransactionStatus.Aborting)
        {
            Violate($"{invoke.BranchName}.compensate invoked while {next.Status}");
        }

        if (!action.MayHaveApplied() || action.Status == OpStatus.InFlight)
        {
            Violate($"{invoke.BranchName}.compensate invoked although its action is {action.Status} with {action.Attempts} attempts");
        }

        if (SagaMachine.PivotPassed(next))
        {
            Violate($"{invoke.BranchName}.compensate invoked after the pivot succeeded");
        }

        foreach (var j in Dependents(branch))
        {
            if (!Settled(next, j))
            {
                Violate($"{invoke.BranchName}.compensate invoked before its dependent {Spec.Branches[j].Name} was undone");
            }
        }
    }

    /// <summary>Checks the end state of a run that reached a terminal status.</summary>
    public void CheckOutcome()
    {
        if (!State.IsTerminal)
        {
            return; // already reported
        }

        if (Finishes != 1)
        {
            Violate($"{Finishes} Finish commands");
        }

        if (State.Status == TransactionStatus.Committed)
        {
            if (CompensateInvocations > 0 || State.Branches.Any(b => b.Op(Compensate).Attempts > 0))
            {
                Violate("committed with compensations invoked");
            }

            return;
        }

        State.Status.ShouldBe(TransactionStatus.Aborted);
        if (SagaMachine.PivotPassed(State))
        {
            Violate("aborted although the pivot succeeded");
        }

        for (var i = 0; i < State.Branches.Length; i++)
        {
            var action = State.Branches[i].Op(Action);
            var compensate = State.Branches[i].Op(Compensate);
            if (action.MayHaveApplied() && compensate.Status != OpStatus.Succeeded)
            {
                Violate($"b{i}.action may have applied ({action.Status}, {action.Attempts} attempts) but was not compensated");
            }

            // Undone although never called: only an action a restart marked maybe-called (its
            // forward step may have left before its write was durable) is compensated unseen.
            if ((action.Status == OpStatus.Failed || (action.Status == OpStatus.NotStarted && !action.MaybeCalled)) && compensate.Attempts > 0)
            {
                Violate($"b{i}.action was {action.Status} yet compensated");
            }

            if (_firstCompensateInvoked[i] is not { } started)
            {
                continue;
            }

            foreach (var j in Dependents(i))
            {
                if (_firstCompensateInvoked[j] is not null && !(_compensateSucceeded[j] <= started))
                {
                    Violate($"b{i}.compensate started (#{started}) before its dependent b{j}'s compensation succeeded (#{_compensateSucceeded[j]})");
                }
            }
        }
    }

    public static string Describe(TransactionState state) =>
        $"{state.Status}{(state.Stuck ? " STUCK" : "")} wake={state.NextWakeAt:HH:mm:ss.fff} " +
        string.Join(" ", state.Branches.Select(b =>
            $"{b.Name}(a:{b.Op(Action).Status}/{b.Op(Action).Attempts} c:{b.Op(Compensate).Status}/{b.Op(Compensate).Attempts})"));
}
