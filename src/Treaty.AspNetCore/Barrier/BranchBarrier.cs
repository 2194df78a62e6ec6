using System.Text.Json;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.InDoubt;

namespace Treaty.AspNetCore.Barrier;

/// <summary>What the barrier answered and why.</summary>
internal sealed record BarrierAnswer(BarrierDecision Decision, BranchResult Result);

/// <summary>
/// Runs branch calls through the barrier table of the participant's database: a local transaction
/// per call, the (gid, branch) locked, the recorded rows read, <see cref="BarrierRules.Decide"/>
/// asked, and then either the stored answer replayed or the call recorded, with the handler's
/// writes when the handler runs, in one commit. The same commit keeps the prepared table
/// (<c>treaty_prepared</c>) in step: a 2PC/3PC vote that answered 2xx enters (or moves) its stage
/// there, and the op that carries the outcome leaves it.
/// </summary>
internal sealed class BranchBarrier(ParticipantDatabase database, TimeProvider timeProvider, ILogger<BranchBarrier> logger)
{
    /// <summary>Type of the 409 answered to a forward op that arrives after its compensation.</summary>
    public const string AlreadyCompensatedType = "https://treaty.dev/problems/branch-already-compensated";

    /// <summary>Type of the 409 answered to an outcome op that arrives after the opposite outcome took effect.</summary>
    public const string OutcomeConflictType = "https://treaty.dev/problems/branch-outcome-conflict";

    private const string HandlerSavepoint = "treaty_branch_handler";

    public ParticipantDatabase Database => database;

    /// <summary>
    /// Executes <paramref name="call"/>, which reached the endpoint mapped on
    /// <paramref name="endpoint"/>. Exceptions of <paramref name="handler"/> propagate after the
    /// transaction has been rolled back: nothing is recorded, so the coordinator's retry runs again.
    /// </summary>
    public async Task<BarrierAnswer> ExecuteAsync(
        BranchCall call,
        string endpoint,
        Func<ParticipantTransaction, CancellationToken, Task<BranchResult>> handler,
        CancellationToken cancellationToken) =>
        (await RunAsync(call, endpoint, handler, onlyAt: null, cancellationToken))!;

    /// <summary>
    /// Executes the outcome op <paramref name="call"/> that the in-doubt resolver decided for a
    /// branch it read at <paramref name="decidedAt"/>; null, with nothing run or recorded, when the
    /// branch is no longer at that stage (its outcome or a preCommit arrived since it was read).
    /// </summary>
    public Task<BarrierAnswer?> ResolveAsync(
        BranchCall call,
        string endpoint,
        PreparedStage decidedAt,
        Func<ParticipantTransaction, CancellationToken, Task<BranchResult>> handler,
        CancellationToken cancellationToken) =>
        RunAsync(call, endpoint, handler, decidedAt, cancellationToken);

    private async Task<BarrierAnswer?> RunAsync(
        BranchCall call,
        string endpoint,
        Func<ParticipantTransaction, CancellationToken, Task<BranchResult>> handler,
        PreparedStage? onlyAt,
        CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        if (transaction.Dialect == SqlDialect.PostgreSql)
        {
            // SQLite needs nothing: BEGIN IMMEDIATE already holds the database's write lock.
            await using var lockCommand = transaction.CreateCommand(BarrierSql.PostgreSqlLock, ("key", BarrierSql.LockKey(call.Gid, call.Branch)));
            await lockCommand.ExecuteNonQueryAsync(cancellationToken);
        }

        if (onlyAt is { } expected && !InDoubtRules.StillApplies(expected, await ReadStageAsync(transaction, call, cancellationToken)))
        {
            return null;
        }

        List<BarrierRecord> existing;
        BranchResult? stored;
        await using (var select = transaction.CreateCommand(BarrierSql.SelectBranch, ("gid", call.Gid), ("branch", call.Branch)))
        {
            (existing, stored) = await BarrierSql.ReadBranchAsync(select, call.Op, cancellationToken);
        }

        var decision = BarrierRules.Decide(existing, call.Op);
        BranchResult result;
        switch (decision)
        {
            case BarrierDecision.ReplayStored:
                BarrierLog.Replayed(logger, call.Gid, call.Branch, call.Op, stored!.StatusCode);
                return new BarrierAnswer(decision, stored);

            case BarrierDecision.Conflict:
                // Nothing recorded: every retry hears the same, and the transaction waits for an
                // operator (stuck) instead of pretending both outcomes happened.
                var opposite = BarrierRules.OppositeOutcomeOf(call.Op)!;
                BarrierLog.OutcomeConflict(logger, call.Gid, call.Branch, call.Op, opposite);
                return new BarrierAnswer(decision, OutcomeConflict(call, opposite));

            case BarrierDecision.NullCompensation:
                BarrierLog.NullCompensation(logger, call.Gid, call.Branch, call.Op);
                result = BranchResult.Stored(200, NullCompensationBody(call));
                break;

            case BarrierDecision.SkipHanging:
                BarrierLog.SkippedHanging(logger, call.Gid, call.Branch, call.Op);
                result = AlreadyCompensated(call);
                break;

            default:
                // A definitive failure promises "nothing was applied": the savepoint undoes whatever
                // the handler wrote before deciding to refuse (and clears an aborted PostgreSQL
                // transaction if a statement of the handler failed), and the row is still recorded.
                await transaction.Transaction.SaveAsync(HandlerSavepoint, cancellationToken);
                result = await handler(transaction, cancellationToken);
                if (!result.IsSuccess)
                {
                    await transaction.Transaction.RollbackAsync(HandlerSavepoint, cancellationToken);
                }

                break;
        }

        var outcome = BarrierRules.OutcomeOf(decision, result.StatusCode);
        if (!BarrierRules.Records(call.Op, outcome))
        {
            // A refused compensation or final op: nothing recorded, nothing applied; the retry runs again.
            await transaction.RollbackAsync(cancellationToken);
            return new BarrierAnswer(decision, result);
        }

        await using (var insert = transaction.CreateCommand(
            BarrierSql.Insert,
            ("gid", call.Gid),
            ("branch", call.Branch),
            ("op", call.Op),
            ("outcome", BarrierRules.ToColumn(outcome)),
            ("status_code", result.StatusCode),
            ("body", result.Body),
            ("recorded_at", timeProvider.GetUtcNow())))
        {
            await insert.ExecuteNonQueryAsync(cancellationToken);
        }

        await KeepPreparedInStepAsync(transaction, call, endpoint, outcome, cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        BarrierLog.Recorded(logger, call.Gid, call.Branch, call.Op, decision, result.StatusCode);
        return new BarrierAnswer(decision, result);
    }

    /// <summary>
    /// A vote that took effect enters its stage (the participant now holds what it reserved, and
    /// is in doubt until it hears the outcome); an outcome that took effect, or that had nothing to
    /// undo, ends the doubt. Written in the caller's transaction, with the handler's writes.
    /// </summary>
    private async Task KeepPreparedInStepAsync(ParticipantTransaction transaction, BranchCall call, string endpoint, BarrierOutcome outcome, CancellationToken cancellationToken)
    {
        if (outcome == BarrierOutcome.Applied && InDoubtRules.StageAfter(call.Op) is { } stage)
        {
            await using var upsert = transaction.CreateCommand(
                PreparedSql.Upsert,
                ("gid", call.Gid),
                ("branch", call.Branch),
                ("stage", InDoubtRules.ToColumn(stage)),
                ("endpoint", endpoint),
                ("payload", call.Payload.GetRawText()),
                ("since", timeProvider.GetUtcNow().ToUnixTimeMilliseconds()),
                ("xact", null),
                ("answer", null));
            await upsert.ExecuteNonQueryAsync(cancellationToken);
        }
        else if ((outcome is BarrierOutcome.Applied or BarrierOutcome.NullCompensation) && InDoubtRules.Resolves(call.Op))
        {
            await using var delete = transaction.CreateCommand(PreparedSql.Delete, ("gid", call.Gid), ("branch", call.Branch));
            await delete.ExecuteNonQueryAsync(cancellationToken);
        }
    }

    private static async Task<PreparedStage?> ReadStageAsync(ParticipantTransaction transaction, BranchCall call, CancellationToken cancellationToken)
    {
        await using var select = transaction.CreateCommand(PreparedSql.SelectOne, ("gid", call.Gid), ("branch", call.Branch));
        await using var reader = await select.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? InDoubtRules.StageFromColumn(reader.GetString(0)) : null;
    }

    /// <summary>The 409 of a forward op that arrived after its compensation.</summary>
    internal static BranchResult AlreadyCompensated(BranchCall call) =>
        BranchResult.Stored(409, ProblemJson.Write(
            409,
            AlreadyCompensatedType,
            "Branch already compensated",
            $"The '{BarrierRules.CompensationOf(call.Op)}' of this branch arrived first; this '{call.Op}' was not applied and never will be.",
            extensions: [new("gid", call.Gid), new("branch", call.Branch), new("op", call.Op)]));

    /// <summary>The 409 of an outcome op that arrived after the opposite outcome took effect.</summary>
    internal static BranchResult OutcomeConflict(BranchCall call, string opposite) =>
        BranchResult.Stored(409, ProblemJson.Write(
            409,
            OutcomeConflictType,
            "Branch already ended the other way",
            $"This branch's '{opposite}' took effect here; this '{call.Op}' was not applied. An operator must reconcile the transaction.",
            extensions: [new("gid", call.Gid), new("branch", call.Branch), new("op", call.Op), new("applied", opposite)]));

    internal static string NullCompensationBody(BranchCall call)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("gid", call.Gid);
            writer.WriteString("branch", call.Branch);
            writer.WriteString("op", call.Op);
            writer.WriteString("outcome", "null-compensation");
            writer.WriteBoolean("applied", false);
            writer.WriteString("reason", "Nothing to undo: the forward operation of this branch never took effect here.");
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
    }
}
