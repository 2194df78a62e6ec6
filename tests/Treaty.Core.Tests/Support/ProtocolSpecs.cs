using System.Collections.Immutable;
using Treaty.Core.Model;

namespace Treaty.Core.Tests.Support;

/// <summary>Builders of TCC, 2PC, 3PC and message definitions for tests: every branch gets every operation's URL.</summary>
internal static class ProtocolSpecs
{
    public static readonly RetryPolicy Policy = new(MaxAttempts: 3, InitialDelayMs: 100, MaxDelayMs: 1000);

    public static TransactionSpec Tcc(params string[] names) => Spec(Protocol.Tcc, [ProtocolNames.Try, ProtocolNames.Confirm, ProtocolNames.Cancel], names);

    public static TransactionSpec TwoPhase(params string[] names) => Spec(Protocol.TwoPhaseCommit, [ProtocolNames.Prepare, ProtocolNames.Commit, ProtocolNames.Rollback], names);

    public static TransactionSpec ThreePhase(params string[] names) =>
        Spec(Protocol.ThreePhaseCommit, [ProtocolNames.CanCommit, ProtocolNames.PreCommit, ProtocolNames.DoCommit, ProtocolNames.Abort], names);

    public static TransactionSpec Message(params string[] names) =>
        Spec(Protocol.Msg, [ProtocolNames.Action], names) with
        {
            Urls = ImmutableSortedDictionary.CreateRange(StringComparer.Ordinal, [KeyValuePair.Create(ProtocolNames.QueryPrepared, "http://sender.test/query")]),
        };

    private static TransactionSpec Spec(Protocol protocol, string[] ops, string[] names) => new(
        "tx-1",
        protocol,
        """{"order":42}""",
        [.. names.Select(n => new BranchSpec(
            n,
            ImmutableSortedDictionary.CreateRange(StringComparer.Ordinal, ops.Select(op => KeyValuePair.Create(op, $"http://svc.test/{n}/{op}"))),
            [],
            false,
            null,
            null))],
        null,
        Policy);
}
