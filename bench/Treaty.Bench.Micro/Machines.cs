using System.Collections.Immutable;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Bench.Micro;

/// <summary>
/// Realistic 3-branch transactions (the shapes the load generator submitted before <c>treaty bench</c>: <c>order</c>,
/// <c>payment</c>, <c>inventory</c> on loopback URLs, a small JSON payload, a retry policy) and a
/// driver that walks them through <c>Decide</c> to the state a benchmark starts from.
/// </summary>
internal static class Machines
{
    public static readonly DateTimeOffset T0 = new(2026, 12, 6, 23, 0, 0, TimeSpan.Zero);

    public static readonly string[] Names = ["order", "payment", "inventory"];

    private const string Payload = """{"orderId":"ord-20261206-000042","customer":"alice","amount":42.50,"currency":"EUR","items":[{"sku":"book-17","qty":1}]}""";

    private static readonly RetryPolicy Retry = new(MaxAttempts: 5, InitialDelayMs: 100, MaxDelayMs: 5_000);

    /// <summary>A saga of three sequential branches, each with an action and a compensation.</summary>
    public static TransactionSpec Saga(string gid = "bench-saga-1") =>
        Spec(gid, Protocol.Saga, [ProtocolNames.Action, ProtocolNames.Compensate], sequential: true);

    public static TransactionSpec Tcc() => Spec("bench-tcc-1", Protocol.Tcc, [ProtocolNames.Try, ProtocolNames.Confirm, ProtocolNames.Cancel], sequential: false);

    public static TransactionSpec TwoPhase() => Spec("bench-2pc-1", Protocol.TwoPhaseCommit, [ProtocolNames.Prepare, ProtocolNames.Commit, ProtocolNames.Rollback], sequential: false);

    public static TransactionSpec ThreePhase() =>
        Spec("bench-3pc-1", Protocol.ThreePhaseCommit, [ProtocolNames.CanCommit, ProtocolNames.PreCommit, ProtocolNames.DoCommit, ProtocolNames.Abort], sequential: false);

    public static TransactionSpec Message() =>
        Spec("bench-msg-1", Protocol.Msg, [ProtocolNames.Action], sequential: false) with
        {
            Urls = ImmutableSortedDictionary.CreateRange(
                StringComparer.Ordinal,
                [KeyValuePair.Create(ProtocolNames.QueryPrepared, "http://127.0.0.1:5101/order/query-prepared")]),
        };

    private static TransactionSpec Spec(string gid, Protocol protocol, string[] ops, bool sequential) => new(
        gid,
        protocol,
        Payload,
        [.. Names.Select((name, i) => new BranchSpec(
            name,
            ImmutableSortedDictionary.CreateRange(
                StringComparer.Ordinal,
                ops.Select(op => KeyValuePair.Create(op, $"http://127.0.0.1:5101/{name}/{op}"))),
            sequential && i > 0 ? [Names[i - 1]] : [],
            false,
            5_000,
            null))],
        30_000,
        Retry);
}

/// <summary>Walks one transaction through a machine's <c>Decide</c>, as the engine would, 1 ms per step.</summary>
internal sealed class Driver
{
    private readonly IProtocolMachine _machine;
    private readonly IRandomSource _random = new SeededRandomSource(42);

    public Driver(IProtocolMachine machine, TransactionSpec spec)
    {
        _machine = machine;
        Now = Machines.T0;
        State = machine.Create(spec, "sha256:6f1ed002ab5595859014ebf0951522d9", Now);
    }

    public TransactionState State { get; private set; }

    public DateTimeOffset Now { get; private set; }

    /// <summary>The context of the next decision (the clock one millisecond on).</summary>
    public DecisionContext NextContext() => new(Now.AddMilliseconds(1), _random);

    public Decision Send(TransactionEvent @event)
    {
        var context = NextContext();
        Now = context.Now;
        var decision = _machine.Decide(State, @event, context);
        if (!decision.Changed(State))
        {
            throw new InvalidOperationException($"{@event} changed nothing in {State.Spec.Protocol} at {State.Phase}.");
        }

        State = decision.Next with { Version = State.Version + 1 };
        return decision;
    }

    /// <summary>The answer of the current attempt of <paramref name="op"/> on branch <paramref name="branch"/>.</summary>
    public OperationCompleted Answer(int branch, string op, bool success = true) => new(
        branch,
        op,
        State.Branches[branch].Op(op).Attempts,
        success
            ? BranchOutcome.Success(200, """{"ok":true}""") with { Duration = TimeSpan.FromMilliseconds(2) }
            : BranchOutcome.Failure(409, "insufficient funds") with { Duration = TimeSpan.FromMilliseconds(2) });

    /// <summary>Answers <paramref name="op"/> of every branch but the last with success.</summary>
    public void AnswerAllButLast(string op)
    {
        for (var i = 0; i < State.Branches.Length - 1; i++)
        {
            Send(Answer(i, op));
        }
    }
}
