using System.Security.Cryptography;
using System.Text;
using Treaty.AspNetCore.Barrier;

namespace Treaty.AspNetCore.PreparedTransactions;

/// <summary>What a prepared-transaction branch does with one call.</summary>
internal enum PreparedTransactionAction
{
    /// <summary>prepare, first delivery: run the handler in a transaction and <c>PREPARE TRANSACTION</c> it.</summary>
    RunPrepare,

    /// <summary>A committed barrier row answers this op: replay it.</summary>
    ReplayStored,

    /// <summary>prepare while its prepared transaction exists: replay the answer kept beside it (its own barrier row is inside the prepared transaction, invisible).</summary>
    ReplayPrepared,

    /// <summary>prepare after its rollback: record it and refuse with 409, run nothing.</summary>
    SkipHanging,

    /// <summary>commit of a prepared transaction: <c>COMMIT PREPARED</c>, then record.</summary>
    CommitPrepared,

    /// <summary>commit whose prepared transaction was already committed (a crash came between <c>COMMIT PREPARED</c> and recording it): record it.</summary>
    FinishCommit,

    /// <summary>rollback of a prepared transaction: <c>ROLLBACK PREPARED</c>, then record.</summary>
    RollbackPrepared,

    /// <summary>rollback with nothing prepared (the prepare never arrived, failed, or crashed before <c>PREPARE</c>): record it, run nothing.</summary>
    NullRollback,

    /// <summary>The other outcome took effect, or there is nothing left to commit: refuse with 409, record nothing.</summary>
    Conflict,
}

/// <summary>
/// The decisions of a 2PC branch implemented with PostgreSQL's native prepared transactions, as
/// plain functions. The truth is split between two places: the barrier rows that are committed
/// (visible), and <c>pg_prepared_xacts</c>. The prepare's own barrier row is written inside the
/// prepared transaction, so it becomes visible exactly when the prepared work is committed and
/// disappears when it is rolled back: "prepare visible and no prepared transaction" means
/// committed, whatever crashed in between.
/// </summary>
internal static class PreparedTransactionRules
{
    /// <summary>The operations a prepared-transaction branch serves (2PC's).</summary>
    public static bool Serves(string op) => op is "prepare" or "commit" or "rollback";

    /// <summary>Decides what to do with <paramref name="op"/>, holding the (gid, branch) lock.</summary>
    /// <param name="op">prepare, commit or rollback.</param>
    /// <param name="visible">The committed barrier rows of the (gid, branch).</param>
    /// <param name="prepared">Whether the branch's prepared transaction exists (<c>pg_prepared_xacts</c>).</param>
    public static PreparedTransactionAction Decide(string op, IReadOnlyCollection<BarrierRecord> visible, bool prepared)
    {
        var prepareRow = Find(visible, "prepare");
        var commitRow = Find(visible, "commit");
        var rollbackRow = Find(visible, "rollback");
        var committed = !prepared && prepareRow?.Outcome == BarrierOutcome.Applied;
        return op switch
        {
            "prepare" when prepareRow is not null => PreparedTransactionAction.ReplayStored,
            "prepare" when prepared => PreparedTransactionAction.ReplayPrepared,
            "prepare" when rollbackRow is not null => PreparedTransactionAction.SkipHanging,
            "prepare" => PreparedTransactionAction.RunPrepare,

            "commit" when commitRow is not null => PreparedTransactionAction.ReplayStored,
            "commit" when rollbackRow is not null => PreparedTransactionAction.Conflict,
            "commit" when prepared => PreparedTransactionAction.CommitPrepared,
            "commit" when committed => PreparedTransactionAction.FinishCommit,
            "commit" => PreparedTransactionAction.Conflict,

            "rollback" when rollbackRow is not null => PreparedTransactionAction.ReplayStored,
            "rollback" when commitRow is not null || committed => PreparedTransactionAction.Conflict,
            "rollback" when prepared => PreparedTransactionAction.RollbackPrepared,
            "rollback" => PreparedTransactionAction.NullRollback,

            _ => throw new ArgumentOutOfRangeException(nameof(op), op, "A prepared-transaction branch serves prepare, commit and rollback."),
        };
    }

    /// <summary>
    /// The prepared transaction's identifier for a (gid, branch) of database
    /// <paramref name="database"/>: <c>treaty_</c> and 40 hex digits of a SHA-256 over the three,
    /// length-prefixed. Identifiers are unique across the whole PostgreSQL cluster and shorter than
    /// 200 bytes, and a gid and a branch may each be 256 characters, so they are hashed; the
    /// database name keeps two participants sharing a cluster apart.
    /// </summary>
    public static string TransactionName(string database, string gid, string branch)
    {
        var input = Encoding.UTF8.GetBytes($"treaty-2pc\n{database.Length}\n{database}\n{gid.Length}\n{gid}\n{branch}");
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(input, hash);
        return "treaty_" + Convert.ToHexStringLower(hash[..20]);
    }

    /// <summary>
    /// <paramref name="name"/> as an SQL string literal. <c>PREPARE TRANSACTION</c>, <c>COMMIT
    /// PREPARED</c> and <c>ROLLBACK PREPARED</c> take a literal, not a parameter, so this is the one
    /// place the kit writes a value into SQL text: only names of the form
    /// <see cref="TransactionName"/> makes (lowercase hex and an underscore) are accepted.
    /// </summary>
    public static string Literal(string name)
    {
        if (!name.StartsWith("treaty_", StringComparison.Ordinal) || name.Length != 47
            || name.AsSpan(7).ContainsAnyExcept("0123456789abcdef"))
        {
            throw new ArgumentException("Not a prepared-transaction name made by the kit.", nameof(name));
        }

        return "'" + name + "'";
    }

    /// <summary>The advisory lock key of a (gid, branch): the barrier's, so both kinds of endpoint serialize the same way.</summary>
    public static long LockKey(string gid, string branch) => BarrierSql.LockKey(gid, branch);

    private static BarrierRecord? Find(IReadOnlyCollection<BarrierRecord> records, string op)
    {
        foreach (var record in records)
        {
            if (string.Equals(record.Op, op, StringComparison.Ordinal))
            {
                return record;
            }
        }

        return null;
    }
}
