using Treaty.Core.Model;

namespace Treaty.Server.Alerts;

/// <summary>One alert to record (and then deliver): a transaction became stuck, or stopped being stuck.</summary>
/// <param name="Kind"><see cref="AlertRules.Stuck"/> or <see cref="AlertRules.Resolved"/>.</param>
/// <param name="Episode">Which time the transaction became stuck (1 the first time; an operator's
/// retry that fails again starts the next).</param>
internal sealed record AlertToRecord(string Kind, int Episode)
{
    /// <summary>The alert's id, stable across restarts: what a receiver deduplicates on.</summary>
    public string Id(string gid) => AlertRules.Id(gid, Kind, Episode);
}

/// <summary>What the outbox already holds for a transaction: its last stuck episode (0: none) and
/// whether that episode's resolution was recorded.</summary>
internal readonly record struct AlertLedger(int LastStuckEpisode, bool LastResolved)
{
    public static AlertLedger None => new(0, true);

    public bool Open => LastStuckEpisode > 0 && !LastResolved;
}

/// <summary>
/// When a transaction alerts: once each time it becomes stuck, and once when that stuck episode ends
/// (an operator's retry or abort, or a retry that healed it, or it finished). Pure: the caller reads
/// the transaction, counts its <c>stuck</c> journal entries and asks the outbox for the ledger.
/// </summary>
internal static class AlertRules
{
    public const string Stuck = "stuck";
    public const string Resolved = "resolved";

    public static string Id(string gid, string kind, int episode) => $"{gid}/{kind}/{episode}";

    /// <param name="state">The transaction now (null: it no longer exists, e.g. removed by retention).</param>
    /// <param name="stuckEpisodes">How many times its journal says it became stuck (read only when it is stuck).</param>
    /// <param name="ledger">What the outbox holds for it.</param>
    public static IReadOnlyList<AlertToRecord> Decide(TransactionState? state, int stuckEpisodes, AlertLedger ledger)
    {
        if (state is not { Stuck: true })
        {
            return ledger.Open ? [new(Resolved, ledger.LastStuckEpisode)] : [];
        }

        // Stuck now. The journal entry of this episode may not be durable yet when the state is read
        // (a lazily written decision): it is at least the first episode, and never an older one.
        var episode = Math.Max(stuckEpisodes, 1);
        if (episode <= ledger.LastStuckEpisode)
        {
            return [];
        }

        // Between two looks it left the last episode and became stuck again: that episode ended first.
        return ledger.Open
            ? [new(Resolved, ledger.LastStuckEpisode), new(Stuck, episode)]
            : [new(Stuck, episode)];
    }
}
