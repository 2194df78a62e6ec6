using Microsoft.AspNetCore.Http;
using Microsoft.Data.Sqlite;
using Shop.Infrastructure;
using Treaty.AspNetCore.Barrier;

namespace Shop.Payment;

/// <summary>
/// The customer wallets and their effects, shared by every protocol. Money is in the balance, held
/// for a transaction in flight (<c>held</c>, with one <c>payment_holds</c> row per gid), or gone
/// (a <c>debit</c> in the ledger). The ledger has at most one debit and one refund per gid (a
/// UNIQUE constraint): money moves at most once per transaction, whatever calls arrive.
/// <para>
/// 2PC and 3PC also lock the wallet row (<c>locked_by</c>) from their YES vote to the outcome:
/// any other payment of that customer is refused (409 <c>row-locked</c>) meanwhile.
/// </para>
/// </summary>
internal sealed class Wallet(TimeProvider timeProvider)
{
    public const string Schema = """
        CREATE TABLE IF NOT EXISTS wallets (
            customer_id TEXT PRIMARY KEY,
            balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0),
            held_cents INTEGER NOT NULL DEFAULT 0 CHECK (held_cents >= 0),
            limit_cents INTEGER NOT NULL,
            locked_by TEXT
        );
        CREATE TABLE IF NOT EXISTS payment_holds (
            gid TEXT PRIMARY KEY,
            customer_id TEXT NOT NULL REFERENCES wallets (customer_id),
            amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
            state TEXT NOT NULL CHECK (state IN ('held', 'captured', 'released')),
            at TEXT NOT NULL,
            settled_at TEXT
        );
        CREATE TABLE IF NOT EXISTS ledger (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            gid TEXT NOT NULL,
            customer_id TEXT NOT NULL REFERENCES wallets (customer_id),
            kind TEXT NOT NULL CHECK (kind IN ('debit', 'refund')),
            amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
            at TEXT NOT NULL,
            UNIQUE (gid, kind)
        );
        CREATE INDEX IF NOT EXISTS ledger_customer ON ledger (customer_id, id);
        """;

    public static void Seed(SqliteConnection connection, SqliteTransaction transaction, int scale = 1)
    {
        foreach (var customer in Catalogue.Customers)
        {
            // INSERT OR IGNORE: seeds on the first start only, never resets a wallet later.
            using var command = Sql.Command(connection, transaction,
                "INSERT OR IGNORE INTO wallets (customer_id, balance_cents, held_cents, limit_cents) VALUES ($id, $balance, 0, $limit)",
                ("$id", customer.Id), ("$balance", customer.BalanceCents * scale), ("$limit", customer.LimitCents));
            command.ExecuteNonQuery();
        }
    }

    /// <summary>Saga: takes the amount from the balance now (a ledger debit).</summary>
    public async Task<BranchResult> DebitAsync(BranchContext context, CancellationToken ct)
    {
        var (connection, transaction, customerId, cents, refusal) = await CheckAsync(context, ct);
        if (refusal is not null)
        {
            return refusal;
        }

        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE wallets SET balance_cents = balance_cents - $amount WHERE customer_id = $id", ct, ("$amount", cents), ("$id", customerId));
        await InsertLedgerAsync(connection, transaction, context.Gid, customerId, "debit", cents, ct);
        Branches.MarkApplied(context);
        return await ResultAsync(context, customerId, cents, "debited", ct);
    }

    /// <summary>Saga's compensation: gives back exactly what this gid debited, once (the ledger says what).</summary>
    public async Task<BranchResult> RefundAsync(BranchContext context, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        if (await LedgerAsync(connection, transaction, context.Gid, "debit", ct) is not { } debit)
        {
            return Branches.Skipped(context, "nothing to refund: this transaction debited nothing");
        }

        if (await LedgerAsync(connection, transaction, context.Gid, "refund", ct) is not null)
        {
            return await ResultAsync(context, debit.CustomerId, debit.Cents, "already-refunded", ct);
        }

        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE wallets SET balance_cents = balance_cents + $amount WHERE customer_id = $id", ct, ("$amount", debit.Cents), ("$id", debit.CustomerId));
        await InsertLedgerAsync(connection, transaction, context.Gid, debit.CustomerId, "refund", debit.Cents, ct);
        Branches.MarkApplied(context);
        return await ResultAsync(context, debit.CustomerId, debit.Cents, "refunded", ct);
    }

    /// <summary>TCC, 2PC, 3PC: moves the amount from the balance to <c>held</c>; with <paramref name="lockRow"/>, also locks the wallet until the outcome.</summary>
    public async Task<BranchResult> HoldAsync(BranchContext context, bool lockRow, CancellationToken ct)
    {
        var (connection, transaction, customerId, cents, refusal) = await CheckAsync(context, ct);
        if (refusal is not null)
        {
            return refusal;
        }

        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE wallets SET balance_cents = balance_cents - $amount, held_cents = held_cents + $amount, locked_by = CASE WHEN $lock = 1 THEN $gid ELSE locked_by END WHERE customer_id = $id", ct,
            ("$amount", cents), ("$id", customerId), ("$lock", lockRow ? 1 : 0), ("$gid", context.Gid));
        await Sql.ExecuteAsync(connection, transaction,
            "INSERT INTO payment_holds (gid, customer_id, amount_cents, state, at) VALUES ($gid, $id, $amount, 'held', $at)", ct,
            ("$gid", context.Gid), ("$id", customerId), ("$amount", cents), ("$at", Sql.Timestamp(timeProvider.GetUtcNow())));
        Branches.MarkApplied(context);
        return await ResultAsync(context, customerId, cents, "held", ct);
    }

    /// <summary>The outcome is commit: the held amount is taken (held → a ledger debit); the row lock is dropped.</summary>
    public Task<BranchResult> CaptureAsync(BranchContext context, CancellationToken ct) => SettleAsync(context, "captured", ct);

    /// <summary>The outcome is abort: the held amount goes back to the balance; the row lock is dropped.</summary>
    public Task<BranchResult> ReleaseAsync(BranchContext context, CancellationToken ct) => SettleAsync(context, "released", ct);

    private async Task<BranchResult> SettleAsync(BranchContext context, string to, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        await Sql.ExecuteAsync(connection, transaction, "UPDATE wallets SET locked_by = NULL WHERE locked_by = $gid", ct, ("$gid", context.Gid));
        await using var find = Sql.Command(connection, transaction,
            "SELECT customer_id, amount_cents, state FROM payment_holds WHERE gid = $gid", ("$gid", context.Gid));
        string customerId, state;
        long cents;
        await using (var reader = await find.ExecuteReaderAsync(ct))
        {
            if (!await reader.ReadAsync(ct))
            {
                return Branches.Skipped(context, "nothing to settle: this transaction holds no money");
            }

            (customerId, cents, state) = (reader.GetString(0), reader.GetInt64(1), reader.GetString(2));
        }

        if (state != "held")
        {
            return await ResultAsync(context, customerId, cents, "already-" + state, ct);
        }

        await Sql.ExecuteAsync(connection, transaction,
            to == "captured"
                ? "UPDATE wallets SET held_cents = held_cents - $amount WHERE customer_id = $id"
                : "UPDATE wallets SET held_cents = held_cents - $amount, balance_cents = balance_cents + $amount WHERE customer_id = $id",
            ct, ("$amount", cents), ("$id", customerId));
        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE payment_holds SET state = $to, settled_at = $at WHERE gid = $gid", ct,
            ("$to", to), ("$gid", context.Gid), ("$at", Sql.Timestamp(timeProvider.GetUtcNow())));
        if (to == "captured")
        {
            await InsertLedgerAsync(connection, transaction, context.Gid, customerId, "debit", cents, ct);
        }

        Branches.MarkApplied(context);
        return await ResultAsync(context, customerId, cents, to, ct);
    }

    /// <summary>Reads the payload and refuses what cannot be taken: unknown customer, a locked row, over the limit, not enough money, taken already.</summary>
    private static async Task<(SqliteConnection, SqliteTransaction, string CustomerId, long Cents, BranchResult? Refusal)> CheckAsync(BranchContext context, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        var (customerId, cents, errors) = ReadPayload(context);
        if (errors is not null)
        {
            return (connection, transaction, "", 0, Branches.Invalid(context, errors));
        }

        if (await TakenAsync(connection, transaction, context.Gid, ct))
        {
            // Taken already under another branch name: never twice for one gid.
            return (connection, transaction, customerId, cents, await ResultAsync(context, customerId, cents, "already-taken", ct));
        }

        var wallet = await WalletQueries.FindAsync(connection, transaction, customerId, ct);
        var amount = Money.FromCents(cents);
        var refusal = wallet switch
        {
            null => context.Fail(StatusCodes.Status422UnprocessableEntity, Problems.UnknownCustomer, "Unknown customer",
                $"There is no wallet for customer '{customerId}'."),
            { LockedBy: { } holder } when holder != context.Gid => context.Fail(StatusCodes.Status409Conflict, Problems.RowLocked, "Row locked",
                $"The wallet of '{customerId}' is locked by prepared transaction {holder} until its outcome."),
            _ when amount > wallet.Limit => context.Fail(StatusCodes.Status422UnprocessableEntity, Problems.OverLimit, "Over the per-order limit",
                $"The amount {amount} exceeds the per-order limit {wallet.Limit} of customer '{customerId}'."),
            _ when amount > wallet.Balance => context.Fail(StatusCodes.Status422UnprocessableEntity, Problems.InsufficientFunds, "Insufficient funds",
                $"The balance {wallet.Balance} of customer '{customerId}' does not cover {amount}."),
            _ => null,
        };
        return (connection, transaction, customerId, cents, refusal);
    }

    private static async Task<bool> TakenAsync(SqliteConnection connection, SqliteTransaction transaction, string gid, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT 1 FROM ledger WHERE gid = $gid AND kind = 'debit' UNION ALL SELECT 1 FROM payment_holds WHERE gid = $gid LIMIT 1", ("$gid", gid));
        return await command.ExecuteScalarAsync(ct) is not null;
    }

    private static (string CustomerId, long Cents, Dictionary<string, string[]>? Errors) ReadPayload(BranchContext context)
    {
        var payload = OrderPayload.Read(context.Payload);
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        if (payload is null)
        {
            errors["payload"] = ["The payload must be an object with customerId and amount."];
            return ("", 0, errors);
        }

        if (string.IsNullOrEmpty(payload.CustomerId))
        {
            errors["payload.customerId"] = ["customerId is required."];
        }

        long cents = 0;
        if (payload.Amount is not { } amount || !Money.TryToCents(amount, out cents))
        {
            errors["payload.amount"] = ["amount must be a positive number with at most two decimals."];
        }

        return errors.Count > 0 ? ("", 0, errors) : (payload.CustomerId!, cents, null);
    }

    private static async Task<BranchResult> ResultAsync(BranchContext context, string customerId, long cents, string outcome, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        var wallet = await WalletQueries.FindAsync(connection, transaction, customerId, ct);
        return context.Ok(new PaymentResult(context.Gid, customerId, Money.FromCents(cents), wallet?.Balance ?? 0, wallet?.Held ?? 0, outcome),
            ShopJsonContext.Web.PaymentResult);
    }

    private async Task InsertLedgerAsync(SqliteConnection connection, SqliteTransaction transaction, string gid, string customerId, string kind, long cents, CancellationToken ct) =>
        await Sql.ExecuteAsync(connection, transaction,
            "INSERT INTO ledger (gid, customer_id, kind, amount_cents, at) VALUES ($gid, $id, $kind, $amount, $at)", ct,
            ("$gid", gid), ("$id", customerId), ("$kind", kind), ("$amount", cents), ("$at", Sql.Timestamp(timeProvider.GetUtcNow())));

    private static async Task<(string CustomerId, long Cents)?> LedgerAsync(SqliteConnection connection, SqliteTransaction transaction, string gid, string kind, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT customer_id, amount_cents FROM ledger WHERE gid = $gid AND kind = $kind", ("$gid", gid), ("$kind", kind));
        await using var reader = await command.ExecuteReaderAsync(ct);
        return await reader.ReadAsync(ct) ? (reader.GetString(0), reader.GetInt64(1)) : null;
    }
}
