using System.Data;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Npgsql;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.InDoubt;

namespace Treaty.AspNetCore.PreparedTransactions;

/// <summary>
/// Runs the calls of a 2PC branch whose prepare is a PostgreSQL prepared transaction.
/// <list type="number">
/// <item>Every call takes a <b>session-level</b> advisory lock on its (gid, branch) first (the
/// barrier's key), and releases it when done. Not the barrier's transaction-level lock:
/// <c>PREPARE TRANSACTION</c> hands transaction-level locks over to the prepared transaction,
/// which would then hold the lock that its own <c>COMMIT PREPARED</c> needs; session-level locks
/// stay with the session.</item>
/// <item>prepare: the handler runs in a transaction on that connection; the prepare's barrier row
/// is written in the same transaction; the prepared row (<c>treaty_prepared</c>, naming the
/// prepared transaction and keeping the answer) is committed on a second connection; then
/// <c>PREPARE TRANSACTION</c>. The prepared row comes first so a crash can never leave a prepared
/// transaction nobody knows the gid of; a prepared row whose transaction does not exist is
/// harmless (it holds nothing) and is cleaned up by the branch's rollback.</item>
/// <item>commit and rollback: <c>COMMIT PREPARED</c> / <c>ROLLBACK PREPARED</c> (they refuse to
/// run inside a transaction block), then the barrier row and the prepared row's removal in one
/// transaction. A crash between the two is recognised on the next call by
/// <see cref="PreparedTransactionRules.Decide"/>.</item>
/// </list>
/// </summary>
internal sealed class PreparedTransactionExecutor(PostgreSqlParticipantDatabase database, TimeProvider timeProvider, ILogger<PreparedTransactionExecutor> logger)
{
    private const string HandlerSavepoint = "treaty_branch_handler";

    private const string SessionLock = "SELECT pg_advisory_lock(@key)";
    private const string SessionUnlock = "SELECT pg_advisory_unlock(@key)";
    private const string IsPrepared = "SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = @name AND database = current_database())";
    private const string InsertIfAbsent = BarrierSql.Insert + " ON CONFLICT (gid, branch, op) DO NOTHING";

    /// <summary>
    /// Executes <paramref name="call"/> (prepare, commit or rollback) that reached the endpoint
    /// mapped on <paramref name="endpoint"/>; <paramref name="prepare"/> runs for a first prepare
    /// only. With <paramref name="resolving"/> (the in-doubt resolver) the call is skipped, and null
    /// returned, when the branch is no longer in the prepared table.
    /// </summary>
    public async Task<BarrierAnswer?> ExecuteAsync(
        BranchCall call,
        string endpoint,
        Func<ParticipantTransaction, CancellationToken, Task<BranchResult>> prepare,
        bool resolving,
        CancellationToken cancellationToken)
    {
        await using var connection = await database.OpenConnectionAsync(cancellationToken);
        var key = PreparedTransactionRules.LockKey(call.Gid, call.Branch);
        await ExecuteAsync(connection, null, SessionLock, cancellationToken, ("key", key));
        try
        {
            var name = PreparedTransactionRules.TransactionName(connection.Database, call.Gid, call.Branch);
            var state = await ReadStateAsync(connection, call, name, cancellationToken);
            if (resolving && !state.InPreparedTable)
            {
                return null;
            }

            var action = PreparedTransactionRules.Decide(call.Op, state.Visible, state.Prepared);
            return await ActAsync(connection, call, endpoint, name, action, state, prepare, cancellationToken);
        }
        finally
        {
            await UnlockAsync(connection, key);
        }
    }

    private async Task<BarrierAnswer> ActAsync(
        NpgsqlConnection connection,
        BranchCall call,
        string endpoint,
        string name,
        PreparedTransactionAction action,
        BranchState state,
        Func<ParticipantTransaction, CancellationToken, Task<BranchResult>> prepare,
        CancellationToken cancellationToken)
    {
        switch (action)
        {
            case PreparedTransactionAction.ReplayStored:
                BarrierLog.Replayed(logger, call.Gid, call.Branch, call.Op, state.Stored!.StatusCode);
                return new BarrierAnswer(BarrierDecision.ReplayStored, state.Stored);

            case PreparedTransactionAction.ReplayPrepared:
                BarrierLog.Replayed(logger, call.Gid, call.Branch, call.Op, 200);
                return new BarrierAnswer(BarrierDecision.ReplayStored, BranchResult.Stored(200, state.Answer ?? OutcomeBody(call, "prepared")));

            case PreparedTransactionAction.RunPrepare:
                return await PrepareAsync(connection, call, endpoint, name, prepare, cancellationToken);

            case PreparedTransactionAction.CommitPrepared:
                await ExecuteAsync(connection, null, "COMMIT PREPARED " + PreparedTransactionRules.Literal(name), cancellationToken);
                InDoubtLog.CommittedPrepared(logger, call.Gid, call.Branch, name);
                return await RecordOutcomeAsync(connection, call, BarrierDecision.RunHandler, BarrierOutcome.Applied, OutcomeBody(call, "committed"), reinsertPrepare: null, cancellationToken);

            case PreparedTransactionAction.FinishCommit:
                return await RecordOutcomeAsync(connection, call, BarrierDecision.RunHandler, BarrierOutcome.Applied, OutcomeBody(call, "committed"), reinsertPrepare: null, cancellationToken);

            case PreparedTransactionAction.RollbackPrepared:
                await ExecuteAsync(connection, null, "ROLLBACK PREPARED " + PreparedTransactionRules.Literal(name), cancellationToken);
                InDoubtLog.RolledBackPrepared(logger, call.Gid, call.Branch, name);

                // The prepare's barrier row went with the prepared transaction; it is written again
                // so a duplicate prepare keeps hearing its first answer.
                return await RecordOutcomeAsync(connection, call, BarrierDecision.RunHandler, BarrierOutcome.Applied, OutcomeBody(call, "rolled-back"), state.Answer ?? OutcomeBody(call with { Op = "prepare" }, "prepared"), cancellationToken);

            case PreparedTransactionAction.NullRollback:
                BarrierLog.NullCompensation(logger, call.Gid, call.Branch, call.Op);
                return await RecordOutcomeAsync(connection, call, BarrierDecision.NullCompensation, BarrierOutcome.NullCompensation, BranchBarrier.NullCompensationBody(call), reinsertPrepare: null, cancellationToken);

            case PreparedTransactionAction.SkipHanging:
                BarrierLog.SkippedHanging(logger, call.Gid, call.Branch, call.Op);
                var refusal = BranchBarrier.AlreadyCompensated(call);
                await RecordAsync(connection, call, BarrierOutcome.SkippedHanging, refusal, cancellationToken);
                return new BarrierAnswer(BarrierDecision.SkipHanging, refusal);

            case PreparedTransactionAction.Conflict:
                var applied = call.Op == "commit" ? "rollback" : "commit";
                BarrierLog.OutcomeConflict(logger, call.Gid, call.Branch, call.Op, applied);
                return new BarrierAnswer(BarrierDecision.Conflict, BranchBarrier.OutcomeConflict(call, applied));

            default:
                throw new ArgumentOutOfRangeException(nameof(action), action, null);
        }
    }

    private async Task<BarrierAnswer> PrepareAsync(
        NpgsqlConnection connection,
        BranchCall call,
        string endpoint,
        string name,
        Func<ParticipantTransaction, CancellationToken, Task<BranchResult>> prepare,
        CancellationToken cancellationToken)
    {
        var npgsqlTransaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        await using var transaction = new ParticipantTransaction(connection, npgsqlTransaction, SqlDialect.PostgreSql, ownsConnection: false);
        await npgsqlTransaction.SaveAsync(HandlerSavepoint, cancellationToken);
        var result = await prepare(transaction, cancellationToken);
        if (!result.IsSuccess)
        {
            // A NO vote: nothing applied, nothing prepared; the refusal is recorded and replayed.
            await npgsqlTransaction.RollbackAsync(HandlerSavepoint, cancellationToken);
            await InsertAsync(connection, npgsqlTransaction, BarrierSql.Insert, call, BarrierOutcome.Failed, result, cancellationToken);
            await transaction.CommitAsync(cancellationToken);
            BarrierLog.Recorded(logger, call.Gid, call.Branch, call.Op, BarrierDecision.RunHandler, result.StatusCode);
            return new BarrierAnswer(BarrierDecision.RunHandler, result);
        }

        // Inside the prepared transaction: visible once (and only if) it is committed.
        await InsertAsync(connection, npgsqlTransaction, BarrierSql.Insert, call, BarrierOutcome.Applied, result, cancellationToken);
        await SavePreparedRowAsync(call, endpoint, name, result.Body, cancellationToken);
        try
        {
            await ExecuteAsync(connection, npgsqlTransaction, "PREPARE TRANSACTION " + PreparedTransactionRules.Literal(name), cancellationToken);
            transaction.MarkCompleted();
        }
        catch (PostgresException)
        {
            // PREPARE failed and became a ROLLBACK (max_prepared_transactions reached, a temporary
            // table in the handler, ...): nothing is held, so the prepared row is dropped again.
            transaction.MarkCompleted();
            await DeletePreparedRowAsync(call, cancellationToken);
            throw;
        }

        InDoubtLog.PreparedTransaction(logger, call.Gid, call.Branch, name);
        return new BarrierAnswer(BarrierDecision.RunHandler, result);
    }

    private async Task SavePreparedRowAsync(BranchCall call, string endpoint, string name, string answer, CancellationToken cancellationToken)
    {
        await using var second = await database.OpenConnectionAsync(cancellationToken);
        await ExecuteAsync(
            second,
            null,
            PreparedSql.Upsert,
            cancellationToken,
            ("gid", call.Gid),
            ("branch", call.Branch),
            ("stage", InDoubtRules.ToColumn(PreparedStage.Prepared)),
            ("endpoint", endpoint),
            ("payload", call.Payload.GetRawText()),
            ("since", timeProvider.GetUtcNow().ToUnixTimeMilliseconds()),
            ("xact", name),
            ("answer", answer));
    }

    private async Task DeletePreparedRowAsync(BranchCall call, CancellationToken cancellationToken)
    {
        await using var second = await database.OpenConnectionAsync(cancellationToken);
        await ExecuteAsync(second, null, PreparedSql.Delete, cancellationToken, ("gid", call.Gid), ("branch", call.Branch));
    }

    /// <summary>Records an outcome (commit or rollback) and ends the doubt, in one transaction.</summary>
    private async Task<BarrierAnswer> RecordOutcomeAsync(
        NpgsqlConnection connection,
        BranchCall call,
        BarrierDecision decision,
        BarrierOutcome outcome,
        string body,
        string? reinsertPrepare,
        CancellationToken cancellationToken)
    {
        var result = BranchResult.Stored(200, body);
        await using var transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        if (reinsertPrepare is not null)
        {
            await InsertAsync(connection, transaction, InsertIfAbsent, call with { Op = "prepare" }, BarrierOutcome.Applied, BranchResult.Stored(200, reinsertPrepare), cancellationToken);
        }

        await InsertAsync(connection, transaction, BarrierSql.Insert, call, outcome, result, cancellationToken);
        await ExecuteAsync(connection, transaction, PreparedSql.Delete, cancellationToken, ("gid", call.Gid), ("branch", call.Branch));
        await transaction.CommitAsync(cancellationToken);
        BarrierLog.Recorded(logger, call.Gid, call.Branch, call.Op, decision, 200);
        return new BarrierAnswer(decision, result);
    }

    private async Task RecordAsync(NpgsqlConnection connection, BranchCall call, BarrierOutcome outcome, BranchResult result, CancellationToken cancellationToken)
    {
        await using var transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        await InsertAsync(connection, transaction, BarrierSql.Insert, call, outcome, result, cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        BarrierLog.Recorded(logger, call.Gid, call.Branch, call.Op, BarrierDecision.SkipHanging, result.StatusCode);
    }

    private Task InsertAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string sql, BranchCall call, BarrierOutcome outcome, BranchResult result, CancellationToken cancellationToken) =>
        ExecuteAsync(
            connection,
            transaction,
            sql,
            cancellationToken,
            ("gid", call.Gid),
            ("branch", call.Branch),
            ("op", call.Op),
            ("outcome", BarrierRules.ToColumn(outcome)),
            ("status_code", result.StatusCode),
            ("body", result.Body),
            ("recorded_at", timeProvider.GetUtcNow()));

    private static async Task<BranchState> ReadStateAsync(NpgsqlConnection connection, BranchCall call, string name, CancellationToken cancellationToken)
    {
        List<BarrierRecord> visible;
        BranchResult? stored;
        await using (var select = Command(connection, null, BarrierSql.SelectBranch, ("gid", call.Gid), ("branch", call.Branch)))
        {
            (visible, stored) = await BarrierSql.ReadBranchAsync(select, call.Op, cancellationToken);
        }

        bool prepared;
        await using (var exists = Command(connection, null, IsPrepared, ("name", name)))
        {
            prepared = (bool)(await exists.ExecuteScalarAsync(cancellationToken))!;
        }

        var inTable = false;
        string? answer = null;
        await using (var row = Command(connection, null, PreparedSql.SelectOne, ("gid", call.Gid), ("branch", call.Branch)))
        await using (var reader = await row.ExecuteReaderAsync(cancellationToken))
        {
            if (await reader.ReadAsync(cancellationToken))
            {
                inTable = true;
                answer = reader.IsDBNull(2) ? null : reader.GetString(2);
            }
        }

        return new BranchState(visible, stored, prepared, inTable, answer);
    }

    private static async Task UnlockAsync(NpgsqlConnection connection, long key)
    {
        if (connection.State != ConnectionState.Open)
        {
            return; // a broken connection's session ended, and its locks with it
        }

        try
        {
            await ExecuteAsync(connection, null, SessionUnlock, CancellationToken.None, ("key", key));
        }
        catch (NpgsqlException)
        {
            // The connection broke: the session (and its lock) ended on the server. Returning the
            // connection to the pool resets it (DISCARD ALL releases advisory locks) otherwise.
        }
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string sql, CancellationToken cancellationToken, params (string Name, object? Value)[] parameters)
    {
        await using var command = Command(connection, transaction, sql, parameters);
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    private static NpgsqlCommand Command(NpgsqlConnection connection, NpgsqlTransaction? transaction, string sql, params (string Name, object? Value)[] parameters)
    {
        var command = new NpgsqlCommand(sql, connection, transaction);
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value ?? DBNull.Value);
        }

        return command;
    }

    private static string OutcomeBody(BranchCall call, string outcome)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("gid", call.Gid);
            writer.WriteString("branch", call.Branch);
            writer.WriteString("op", call.Op);
            writer.WriteString("outcome", outcome);
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
    }

    /// <summary>What the database says about one (gid, branch), read under its lock.</summary>
    private sealed record BranchState(IReadOnlyList<BarrierRecord> Visible, BranchResult? Stored, bool Prepared, bool InPreparedTable, string? Answer);
}
