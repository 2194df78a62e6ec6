using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.Retention;

/// <summary>
/// Deletes the kit's old barrier rows (<c>treaty_barrier</c>). A barrier row is what lets a
/// participant recognise a late or repeated call of a finished transaction: the replayed answer of
/// a duplicate, and the "already compensated" answer to an action that arrives after its
/// compensation. Once the row is gone the participant would run such a call again, so the age must
/// be longer than the coordinator could ever still call (its retry horizon: every branch's attempts
/// and backoff, the transaction's deadline, an operator's manual retry of a stuck transaction, and
/// a coordinator that was down meanwhile). Days, not minutes. Idempotency keys
/// (<c>treaty_idempotency</c>) have their own lifetime (<c>IdempotencyOptions.KeyLifetime</c>) and
/// sweeper and are not touched here.
/// </summary>
public static class ParticipantRetention
{
    /// <summary>
    /// Deletes barrier rows of at most <paramref name="batchSize"/> rows' worth of branches whose
    /// every row was recorded before <paramref name="recordedBefore"/>, oldest first, in one short
    /// local transaction; returns how many rows it deleted. Call again until it returns 0 (or fewer
    /// than the batch), pausing between calls, to delete everything that old.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> is not positive.</exception>
    public static async Task<int> PurgeBarrierAsync(ParticipantDatabase database, DateTimeOffset recordedBefore, int batchSize, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(database);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var command = transaction.CreateCommand(
            BarrierSql.PurgeOlderThan,
            ("cutoff", recordedBefore.ToUniversalTime()),
            ("limit", batchSize));
        var deleted = await command.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        return deleted;
    }
}
