using System.Collections.Immutable;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Core.Tests.Support;

/// <summary>A random source that always answers the same value, so backoff delays are exact.</summary>
internal sealed class FixedRandom(double value) : IRandomSource
{
    public double NextDouble() => value;
}

/// <summary>Builders of saga definitions for tests.</summary>
internal static class SagaSpecs
{
    public static readonly DateTimeOffset T0 = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);

    public static BranchSpec Branch(
        string name,
        string[]? dependsOn = null,
        bool pivot = false,
        bool compensate = true,
        RetryPolicy? retry = null,
        long? timeoutMs = null)
    {
        var urls = ImmutableSortedDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
        urls[ProtocolNames.Action] = $"http://svc.test/{name}/action";
        if (compensate)
        {
            urls[ProtocolNames.Compensate] = $"http://svc.test/{name}/compensate";
        }

        return new BranchSpec(name, urls.ToImmutable(), [.. dependsOn ?? []], pivot, timeoutMs, retry);
    }

    public static TransactionSpec Saga(IEnumerable<BranchSpec> branches, long? timeoutMs = null, RetryPolicy? retry = null, string gid = "tx-1") =>
        new(gid, Protocol.Saga, """{"order":42}""", [.. branches], timeoutMs, retry);

    /// <summary>A chain: each branch depends on the one before it.</summary>
    public static TransactionSpec Sequential(RetryPolicy? retry, params string[] names) =>
        Saga(names.Select((n, i) => Branch(n, i == 0 ? [] : [names[i - 1]])), retry: retry);

    public static TransactionSpec Sequential(params string[] names) => Sequential(null, names);
}

/// <summary>Drives <see cref="SagaMachine.Decide"/> by hand with a clock the test moves.</summary>
internal sealed class SagaRun(TransactionSpec spec, IRandomSource? random = null) : MachineRun(new SagaMachine(), spec, random);

/// <summary>Drives a protocol machine's <c>Decide</c> by hand with a clock the test moves.</summary>
internal class MachineRun
{
    private readonly IProtocolMachine _machine;
    private readonly IRandomSource _random;

    public MachineRun(IProtocolMachine machine, TransactionSpec spec, IRandomSource? random = null)
    {
        _machine = machine;
        _random = random ?? new FixedRandom(0.5);
        Now = SagaSpecs.T0;
        State = _machine.Create(spec, "fingerprint", Now);
    }

    public IProtocolMachine Machine => _machine;

    public TransactionState State { get; private set; }

    public DateTimeOffset Now { get; set; }

    public Decision Send(TransactionEvent @event)
    {
        var decision = _machine.Decide(State, @event, new DecisionContext(Now, _random));
        State = decision.Next;
        return decision;
    }

    public Decision Submit() => Send(new Submitted());

    public int IndexOf(string branch)
    {
        for (var i = 0; i < State.Spec.Branches.Length; i++)
        {
            if (State.Spec.Branches[i].Name == branch)
            {
                return i;
            }
        }

        throw new ArgumentException($"No branch {branch}", nameof(branch));
    }

    public OpState Op(string branch, string op = ProtocolNames.Action) => State.Branches[IndexOf(branch)].Op(op);

    /// <summary>Answers the current attempt of an operation (or <paramref name="attempt"/> when given).</summary>
    public Decision Complete(string branch, string op, BranchOutcome outcome, int? attempt = null) =>
        Send(new OperationCompleted(IndexOf(branch), op, attempt ?? Op(branch, op).Attempts, outcome));

    public Decision Succeed(string branch, string op = ProtocolNames.Action, int? attempt = null) =>
        Complete(branch, op, BranchOutcome.Success(200, """{"ok":true}"""), attempt);

    public Decision Fail(string branch, string op = ProtocolNames.Action) =>
        Complete(branch, op, BranchOutcome.Failure(409, "insufficient funds"));

    public Decision Unknown(string branch, string op = ProtocolNames.Action) =>
        Complete(branch, op, BranchOutcome.Unknown(503, "service unavailable"));

    /// <summary>Answers the current attempt of a transaction-level operation.</summary>
    public Decision CompleteTransactionOp(string op, BranchOutcome outcome) =>
        Send(new OperationCompleted(null, op, State.TransactionOp(op)!.Attempts, outcome));

    /// <summary>Answers every operation <paramref name="op"/> in flight, with success.</summary>
    public Decision[] SucceedAll(string op) =>
        [.. State.Branches.Where(b => b.Op(op).Status == OpStatus.InFlight).Select(b => Succeed(b.Name, op)).ToList()];

    public Decision FireTimerAt(DateTimeOffset at)
    {
        Now = at;
        return Send(new TimerFired());
    }

    /// <summary>Moves the clock to the wake-up time the state asked for and fires the timer.</summary>
    public Decision FireTimer()
    {
        var wake = State.NextWakeAt ?? throw new InvalidOperationException("The state asks for no wake-up.");
        return FireTimerAt(wake > Now ? wake : Now);
    }
}

internal static class DecisionExtensions
{
    /// <summary>The invocations of a decision as "branch.op#attempt" ("op#attempt" for the transaction's own), in command order.</summary>
    public static string[] Invocations(this Decision decision) =>
        [.. decision.Commands.OfType<InvokeOperation>().Select(c => c.BranchName is null ? $"{c.Op}#{c.Attempt}" : $"{c.BranchName}.{c.Op}#{c.Attempt}")];

    /// <summary>The notifications (calls nobody waits for) of a decision as "branch.op".</summary>
    public static string[] Notifications(this Decision decision) =>
        [.. decision.Commands.OfType<NotifyOperation>().Select(c => $"{c.BranchName}.{c.Op}")];

    public static void ShouldChangeNothing(this Decision decision, TransactionState before)
    {
        decision.Next.ShouldBeSameAs(before);
        decision.Commands.ShouldBeEmpty();
        decision.Journal.ShouldBeEmpty();
    }
}
