using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Data.Sqlite;
using Shop.Infrastructure;
using Treaty.AspNetCore.Barrier;

namespace Shop.Payment;

/// <summary>
/// The customer wallets. A saga's payment step debits the wallet at once (the money is taken, not
/// held; <c>held</c> stays 0 for sagas) and its compensation refunds exactly that debit.
/// The ledger has at most one debit and one refund per gid (a UNIQUE constraint), so money moves at
/// most once per transaction whatever the branch barrier sees. Both branch endpoints run behind the
/// participant kit's barrier (duplicates replayed, null compensations, no hanging debit).
/// </summary>
internal static class PaymentService
{
    public const string Schema = """
        CREATE TABLE IF NOT EXISTS wallets (
            customer_id TEXT PRIMARY KEY,
            balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0),
            held_cents INTEGER NOT NULL DEFAULT 0 CHECK (held_cents >= 0),
            limit_cents INTEGER NOT NULL
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

    public static void Seed(SqliteConnection connection, SqliteTransaction transaction)
    {
        foreach (var customer in Catalogue.Customers)
        {
            // INSERT OR IGNORE: seeds on the first start only, never resets a wallet later.
            using var command = Sql.Command(connection, transaction,
                "INSERT OR IGNORE INTO wallets (customer_id, balance_cents, held_cents, limit_cents) VALUES ($id, $balance, 0, $limit)",
                ("$id", customer.Id), ("$balance", customer.BalanceCents), ("$limit", customer.LimitCents));
            command.ExecuteNonQuery();
        }
    }

    public static void Map(WebApplication app, ShopDatabase database)
    {
        var timeProvider = app.Services.GetRequiredService<TimeProvider>();

        app.MapGet("/wallets", async (CancellationToken ct) =>
        {
            var wallets = await database.ReadAsync(async connection =>
            {
                await using var command = Sql.Command(connection, null,
                    "SELECT customer_id, balance_cents, held_cents, limit_cents FROM wallets ORDER BY customer_id");
                return await ReadWalletsAsync(command, ct);
            }, ct);
            return Results.Json(new WalletListView(wallets), ShopJsonContext.Web.WalletListView);
        });

        app.MapGet("/wallets/{customerId}", async (string customerId, CancellationToken ct) =>
        {
            var wallet = await database.ReadAsync(connection => FindWalletAsync(connection, null, customerId, ct), ct);
            return wallet is null
                ? Problems.NotFound($"No wallet for customer '{customerId}'.")
                : Results.Json(wallet, ShopJsonContext.Web.WalletView);
        });

        app.MapGet("/wallets/{customerId}/ledger", async (string customerId, CancellationToken ct) =>
        {
            var ledger = await database.ReadAsync(async connection =>
            {
                if (await FindWalletAsync(connection, null, customerId, ct) is null)
                {
                    return null;
                }

                await using var command = Sql.Command(connection, null,
                    "SELECT id, gid, kind, amount_cents, at FROM ledger WHERE customer_id = $id ORDER BY id", ("$id", customerId));
                await using var reader = await command.ExecuteReaderAsync(ct);
                var entries = new List<LedgerEntryView>();
                while (await reader.ReadAsync(ct))
                {
                    entries.Add(new LedgerEntryView(reader.GetInt64(0), reader.GetString(1), reader.GetString(2),
                        Money.FromCents(reader.GetInt64(3)), Sql.ParseTimestamp(reader.GetString(4))));
                }

                return new LedgerView(customerId, entries);
            }, ct);
            return ledger is null
                ? Problems.NotFound($"No wallet for customer '{customerId}'.")
                : Results.Json(ledger, ShopJsonContext.Web.LedgerView);
        });

        // Behind the kit's barrier: a refund whose debit never took effect here is a null
        // compensation answered by the kit; a debit arriving after its refund gets 409.
        app.MapBranch("/saga/payment/reserve", (context, ct) => ReserveAsync(context, timeProvider.GetUtcNow(), ct));
        app.MapBranch("/saga/payment/refund", (context, ct) => RefundAsync(context, timeProvider.GetUtcNow(), ct));
    }


    private static async Task<BranchResult> ReserveAsync(BranchContext context, DateTimeOffset now, CancellationToken ct)
    {
        var (customerId, cents, errors) = ReadPayload(context.Payload);
        if (errors is not null)
        {
            return Branches.Invalid(context, errors);
        }

        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        var wallet = await FindWalletAsync(connection, transaction, customerId, ct);
        if (wallet is null)
        {
            return context.Fail(StatusCodes.Status422UnprocessableEntity, Problems.UnknownCustomer, "Unknown customer",
                $"There is no wallet for customer '{customerId}'.");
        }

        if (await LedgerAmountAsync(connection, transaction, context.Gid, "debit", ct) is { } debited)
        {
            // Debited already under another branch name: never take the money twice for one gid.
            return Result(context, customerId, debited, "already-debited", wallet);
        }

        var amount = Money.FromCents(cents);
        if (amount > wallet.Limit)
        {
            return context.Fail(StatusCodes.Status422UnprocessableEntity, Problems.OverLimit, "Over the per-order limit",
                $"The amount {amount} exceeds the per-order limit {wallet.Limit} of customer '{customerId}'.");
        }

        if (amount > wallet.Balance)
        {
            return context.Fail(StatusCodes.Status422UnprocessableEntity, Problems.InsufficientFunds, "Insufficient funds",
                $"The balance {wallet.Balance} of customer '{customerId}' does not cover {amount}.");
        }

        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE wallets SET balance_cents = balance_cents - $amount WHERE customer_id = $id", ct,
            ("$amount", cents), ("$id", customerId));
        await InsertLedgerAsync(connection, transaction, context.Gid, now, customerId, "debit", cents, ct);
        Branches.MarkApplied(context);
        return Result(context, customerId, cents, "debited", wallet with { Balance = wallet.Balance - amount });
    }

    private static async Task<BranchResult> RefundAsync(BranchContext context, DateTimeOffset now, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        // The ledger, not the payload, says what to give back: exactly what this gid took, once.
        await using var find = Sql.Command(connection, transaction,
            "SELECT customer_id, amount_cents FROM ledger WHERE gid = $gid AND kind = 'debit'", ("$gid", context.Gid));
        string customerId;
        long cents;
        await using (var reader = await find.ExecuteReaderAsync(ct))
        {
            if (!await reader.ReadAsync(ct))
            {
                // The barrier answers a refund whose debit never took effect without calling us; this
                // is the same answer for a debit recorded under another branch name of the gid.
                return Branches.Skipped(context, "nothing to refund: this transaction debited nothing");
            }

            customerId = reader.GetString(0);
            cents = reader.GetInt64(1);
        }

        var wallet = (await FindWalletAsync(connection, transaction, customerId, ct))!;
        if (await LedgerAmountAsync(connection, transaction, context.Gid, "refund", ct) is not null)
        {
            return Result(context, customerId, cents, "already-refunded", wallet);
        }

        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE wallets SET balance_cents = balance_cents + $amount WHERE customer_id = $id", ct,
            ("$amount", cents), ("$id", customerId));
        await InsertLedgerAsync(connection, transaction, context.Gid, now, customerId, "refund", cents, ct);
        Branches.MarkApplied(context);
        return Result(context, customerId, cents, "refunded", wallet with { Balance = wallet.Balance + Money.FromCents(cents) });
    }

    private static (string CustomerId, long Cents, Dictionary<string, string[]>? Errors) ReadPayload(JsonElement payloadJson)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        SagaPayload? payload = null;
        try
        {
            payload = payloadJson.ValueKind == System.Text.Json.JsonValueKind.Object
                ? payloadJson.Deserialize(ShopJsonContext.Web.SagaPayload)
                : null;
        }
        catch (System.Text.Json.JsonException)
        {
            // reported below as an invalid payload
        }

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

    private static BranchResult Result(BranchContext context, string customerId, long cents, string outcome, WalletView wallet) =>
        context.Ok(new PaymentResult(context.Gid, customerId, Money.FromCents(cents), wallet.Balance, outcome), ShopJsonContext.Web.PaymentResult);

    private static Task<int> InsertLedgerAsync(SqliteConnection connection, SqliteTransaction transaction, string gid, DateTimeOffset now, string customerId, string kind, long cents, CancellationToken ct) =>
        Sql.ExecuteAsync(connection, transaction,
            "INSERT INTO ledger (gid, customer_id, kind, amount_cents, at) VALUES ($gid, $id, $kind, $amount, $at)",
            ct,
            ("$gid", gid), ("$id", customerId), ("$kind", kind), ("$amount", cents), ("$at", Sql.Timestamp(now)));

    private static async Task<long?> LedgerAmountAsync(SqliteConnection connection, SqliteTransaction transaction, string gid, string kind, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT amount_cents FROM ledger WHERE gid = $gid AND kind = $kind", ("$gid", gid), ("$kind", kind));
        return await command.ExecuteScalarAsync(ct) is long cents ? cents : null;
    }

    private static async Task<WalletView?> FindWalletAsync(SqliteConnection connection, SqliteTransaction? transaction, string customerId, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT customer_id, balance_cents, held_cents, limit_cents FROM wallets WHERE customer_id = $id", ("$id", customerId));
        var wallets = await ReadWalletsAsync(command, ct);
        return wallets.Count == 0 ? null : wallets[0];
    }

    private static async Task<List<WalletView>> ReadWalletsAsync(SqliteCommand command, CancellationToken ct)
    {
        await using var reader = await command.ExecuteReaderAsync(ct);
        var wallets = new List<WalletView>();
        while (await reader.ReadAsync(ct))
        {
            wallets.Add(new WalletView(reader.GetString(0), Money.FromCents(reader.GetInt64(1)),
                Money.FromCents(reader.GetInt64(2)), Money.FromCents(reader.GetInt64(3))));
        }

        return wallets;
    }
}
