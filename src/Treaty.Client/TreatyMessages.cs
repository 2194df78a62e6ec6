using System.Data.Common;

namespace Treaty.Client;

/// <summary>What a sender's local transaction did, as its <c>queryPrepared</c> endpoint reports it.</summary>
public enum PreparedOutcome
{
    /// <summary>The local transaction committed: answer 2xx, and the coordinator delivers the message.</summary>
    Committed,

    /// <summary>The local transaction rolled back, or never ran, or can no longer commit: answer a
    /// definitive 4xx (409), and the coordinator aborts the message.</summary>
    RolledBack,
}

/// <summary>
/// The sender's side of the two-phase message: a marker table in the sender's own database
/// (<c>treaty_message_marks</c>) that records, in the same local transaction as the business
/// change, that the message's transaction committed, and the <c>queryPrepared</c> answer read from
/// it. SQLite (3.24 or later) and PostgreSQL; the connection's type name tells them apart.
/// </summary>
/// <remarks>
/// <para>The table: <c>gid</c> (primary key), <c>state</c> (<c>committed</c> or <c>rolled-back</c>)
/// and <c>at</c> (when the row was written, by the database's clock). <see cref="QueryPreparedAsync"/>
/// and <see cref="MessageBuilder.ExecuteAsync"/> create it when it is missing;
/// <see cref="EnsureTableAsync"/> does only that (call it at start-up when you write markers yourself
/// with <see cref="MarkCommittedAsync"/>, which runs inside your transaction and creates nothing).</para>
/// <para>Rows are small but are never deleted by Treaty. Keep each one until the coordinator can no
/// longer ask about its message (it has been delivered or aborted); deleting rows older than a few
/// days is safe when no message stays prepared that long.</para>
/// </remarks>
public static class TreatyMessages
{
    /// <summary>The marker table's name.</summary>
    public const string TableName = "treaty_message_marks";

    internal const string CommittedState = "committed";
    internal const string RolledBackState = "rolled-back";

    // Both dialects accept the same DML: named parameters with '@' and an upsert that does nothing on
    // a conflict (SQLite since 3.24). Only the column type of the timestamp differs.
    private const string SqliteDdl =
        "CREATE TABLE IF NOT EXISTS " + TableName + " (" +
        "gid TEXT NOT NULL PRIMARY KEY, " +
        "state TEXT NOT NULL CHECK (state IN ('" + CommittedState + "', '" + RolledBackState + "')), " +
        "at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))";

    private const string PostgreSqlDdl =
        "CREATE TABLE IF NOT EXISTS " + TableName + " (" +
        "gid TEXT NOT NULL PRIMARY KEY, " +
        "state TEXT NOT NULL CHECK (state IN ('" + CommittedState + "', '" + RolledBackState + "')), " +
        "at TIMESTAMPTZ NOT NULL DEFAULT now())";

    private const string InsertSql = "INSERT INTO " + TableName + " (gid, state) VALUES (@gid, @state) ON CONFLICT (gid) DO NOTHING";

    private const string SelectSql = "SELECT state FROM " + TableName + " WHERE gid = @gid";

    /// <summary>Creates the marker table in the connection's database unless it exists.</summary>
    /// <param name="connection">A SQLite or PostgreSQL connection; opened (and closed again) if it is closed.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <exception cref="NotSupportedException">The connection is neither SQLite nor PostgreSQL.</exception>
    public static async Task EnsureTableAsync(DbConnection connection, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        var dialect = DialectOf(connection);
        var opened = await OpenAsync(connection, cancellationToken).ConfigureAwait(false);
        try
        {
            await CreateTableAsync(connection, dialect, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (opened)
            {
                await connection.CloseAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Records, inside the sender's local <paramref name="transaction"/>, that the message
    /// <paramref name="gid"/> commits with it. Call it last, just before the commit, when you run
    /// the steps of <see cref="MessageBuilder.ExecuteAsync"/> yourself.
    /// </summary>
    /// <param name="transaction">The sender's open local transaction (SQLite or PostgreSQL).</param>
    /// <param name="gid">The registered message.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <exception cref="InvalidOperationException">The message already has a marker: the coordinator
    /// was told it rolled back (its <c>queryPrepared</c> came first), or an earlier local transaction
    /// already committed it. Roll back: this local transaction must not commit.</exception>
    public static async Task MarkCommittedAsync(DbTransaction transaction, string gid, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        ArgumentException.ThrowIfNullOrEmpty(gid);
        var connection = transaction.Connection
            ?? throw new InvalidOperationException("The transaction has completed; mark the message inside the open local transaction.");
        if (await InsertAsync(connection, transaction, gid, CommittedState, cancellationToken).ConfigureAwait(false) == 1)
        {
            return;
        }

        var state = await ReadStateAsync(connection, transaction, gid, cancellationToken).ConfigureAwait(false);
        throw new InvalidOperationException(state == RolledBackState
            ? $"Message '{gid}' is already marked rolled back: the coordinator asked queryPrepared before this local transaction committed and was told it rolled back. Roll back; the message will not be delivered."
            : $"Message '{gid}' is already marked committed by an earlier local transaction. Roll back; submit it with TreatyClient.SubmitPreparedAsync if that is still pending.");
    }

    /// <summary>
    /// The answer to the coordinator's <c>queryPrepared</c> for <paramref name="gid"/>: did the
    /// sender's local transaction commit? Definitive even while that transaction is still running.
    /// </summary>
    /// <remarks>
    /// It writes a <c>rolled-back</c> marker unless one exists, then reads the marker. A local
    /// transaction that committed has left <c>committed</c>: the answer is
    /// <see cref="PreparedOutcome.Committed"/>. Otherwise the <c>rolled-back</c> row now fences the
    /// message: a local transaction still running fails when it writes its own marker (primary key),
    /// so it can never commit, and <see cref="PreparedOutcome.RolledBack"/> stays true. A local
    /// transaction that already wrote its marker holds the row's lock; the insert waits for it to end
    /// (on SQLite the write lock, up to the connection's busy timeout) and then reads its outcome.
    /// Errors (database unreachable, timeout) propagate: answer 5xx and the coordinator asks again.
    /// </remarks>
    /// <param name="connection">A connection to the sender's database, not inside a transaction;
    /// opened (and closed again) if it is closed.</param>
    /// <param name="gid">The message the coordinator asks about (the <c>Treaty-Gid</c> header).</param>
    /// <param name="cancellationToken">Cancels the statements.</param>
    /// <exception cref="NotSupportedException">The connection is neither SQLite nor PostgreSQL.</exception>
    public static async Task<PreparedOutcome> QueryPreparedAsync(DbConnection connection, string gid, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentException.ThrowIfNullOrEmpty(gid);
        var dialect = DialectOf(connection);
        var opened = await OpenAsync(connection, cancellationToken).ConfigureAwait(false);
        try
        {
            await CreateTableAsync(connection, dialect, cancellationToken).ConfigureAwait(false);
            // Each statement commits on its own: the fence must be durable before the answer leaves.
            await InsertAsync(connection, null, gid, RolledBackState, cancellationToken).ConfigureAwait(false);
            return await ReadStateAsync(connection, null, gid, cancellationToken).ConfigureAwait(false) switch
            {
                CommittedState => PreparedOutcome.Committed,
                RolledBackState => PreparedOutcome.RolledBack,
                var other => throw new InvalidOperationException($"{TableName} holds '{other}' for message '{gid}', which is neither {CommittedState} nor {RolledBackState}."),
            };
        }
        finally
        {
            if (opened)
            {
                await connection.CloseAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>The dialect of <paramref name="connection"/>, from its type name (Treaty.Client references no provider).</summary>
    internal static SqlDialect DialectOf(DbConnection connection)
    {
        var name = connection.GetType().Name;
        if (name.Contains("Sqlite", StringComparison.OrdinalIgnoreCase))
        {
            return SqlDialect.Sqlite;
        }

        if (name.Contains("Npgsql", StringComparison.OrdinalIgnoreCase))
        {
            return SqlDialect.PostgreSql;
        }

        throw new NotSupportedException($"The two-phase message's marker table supports SQLite and PostgreSQL connections, not {connection.GetType().FullName}.");
    }

    /// <summary>Opens a closed connection; true when this call opened it (and so must close it).</summary>
    internal static async Task<bool> OpenAsync(DbConnection connection, CancellationToken cancellationToken)
    {
        if (connection.State == System.Data.ConnectionState.Open)
        {
            return false;
        }

        await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
        return true;
    }

    internal static async Task CreateTableAsync(DbConnection connection, SqlDialect dialect, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = dialect == SqlDialect.Sqlite ? SqliteDdl : PostgreSqlDdl;
        try
        {
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (DbException ex) when (dialect == SqlDialect.PostgreSql && ex.SqlState is "23505" or "42P07")
        {
            // Two sessions created the table at once (PostgreSQL's IF NOT EXISTS is not atomic
            // against a concurrent CREATE): the other one won, and the table exists.
        }
    }

    private static async Task<int> InsertAsync(DbConnection connection, DbTransaction? transaction, string gid, string state, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.Transaction = transaction;
        command.CommandText = InsertSql;
        AddParameter(command, "@gid", gid);
        AddParameter(command, "@state", state);
        return await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
    }

    private static async Task<string?> ReadStateAsync(DbConnection connection, DbTransaction? transaction, string gid, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.Transaction = transaction;
        command.CommandText = SelectSql;
        AddParameter(command, "@gid", gid);
        return await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) as string;
    }

    private static void AddParameter(DbCommand command, string name, string value)
    {
        var parameter = command.CreateParameter();
        parameter.ParameterName = name;
        parameter.Value = value;
        command.Parameters.Add(parameter);
    }
}

/// <summary>The SQL dialects of the marker table.</summary>
internal enum SqlDialect
{
    Sqlite,
    PostgreSql,
}
