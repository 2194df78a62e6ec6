using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Data.Sqlite;
using Shop.Infrastructure;
using Treaty.AspNetCore.Barrier;

namespace Shop.Inventory;

/// <summary>
/// The stock and its three effects, shared by every protocol. Each SKU's quantity is in exactly one
/// of three places: <c>available + held + sold == initial</c> (a CHECK constraint). A transaction
/// in flight holds stock (<see cref="HoldAsync"/>); its outcome sells it (<see cref="SellAsync"/>)
/// or releases it (<see cref="ReleaseAsync"/>). The <c>holds</c> table says what each gid holds,
/// so an outcome moves exactly what that gid took, once, whatever the payload says.
/// <para>
/// Two ways of holding: TCC and the saga hold a quantity (escrow: others may still buy what is
/// left); 2PC and 3PC also lock the SKU's row (<c>locked_by</c>) until the outcome, as a database
/// holds row locks for a prepared transaction — any other transaction that needs the row is
/// refused (409 <c>row-locked</c>) until then. That is what 2PC's blocking costs when its
/// coordinator is away.
/// </para>
/// </summary>
internal sealed class Stock(TimeProvider timeProvider)
{
    public const string Schema = """
        CREATE TABLE IF NOT EXISTS stock (
            sku TEXT PRIMARY KEY,
            initial INTEGER NOT NULL,
            available INTEGER NOT NULL CHECK (available >= 0),
            held INTEGER NOT NULL CHECK (held >= 0),
            sold INTEGER NOT NULL CHECK (sold >= 0),
            locked_by TEXT,
            CHECK (available + held + sold = initial)
        );
        CREATE TABLE IF NOT EXISTS holds (
            gid TEXT NOT NULL,
            sku TEXT NOT NULL REFERENCES stock (sku),
            qty INTEGER NOT NULL CHECK (qty > 0),
            order_id TEXT,
            state TEXT NOT NULL CHECK (state IN ('held', 'sold', 'released')),
            at TEXT NOT NULL,
            settled_at TEXT,
            PRIMARY KEY (gid, sku)
        );
        CREATE INDEX IF NOT EXISTS holds_order ON holds (order_id) WHERE order_id IS NOT NULL;
        CREATE INDEX IF NOT EXISTS holds_sku ON holds (sku, at);
        """;

    /// <summary>The problem type of a hold refused because another transaction holds this order's stock.</summary>
    public const string HeldByAnother = "https://treaty.dev/problems/shop/reservation-in-flight";

    private const int MaxQty = 1000;
    private const int MaxItems = 20;

    public static void Seed(SqliteConnection connection, SqliteTransaction transaction, int scale = 1)
    {
        foreach (var product in Catalogue.Products.Values)
        {
            // INSERT OR IGNORE: seeds on the first start only, never resets the stock later.
            using var command = Sql.Command(connection, transaction,
                "INSERT OR IGNORE INTO stock (sku, initial, available, held, sold) VALUES ($sku, $n, $n, 0, 0)",
                ("$sku", product.Sku), ("$n", product.InitialStock * scale));
            command.ExecuteNonQuery();
        }
    }

    /// <summary>Holds the order's items (all or nothing): available → held; with <paramref name="lockRows"/>, also locks their rows until the outcome.</summary>
    public async Task<BranchResult> HoldAsync(BranchContext context, bool lockRows, CancellationToken ct)
    {
        var (items, orderId, errors) = ReadItems(context.Payload);
        if (errors is not null)
        {
            return Branches.Invalid(context, errors);
        }

        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        if (await HoldsOfAsync(connection, transaction, context.Gid, "held", ct) is { Count: > 0 } existing)
        {
            return Result(context, "already-held", existing); // under another branch name: never twice for one gid
        }

        if (orderId is not null && await HeldForOrderByAnotherAsync(connection, transaction, orderId, context.Gid, ct) is { } other)
        {
            return context.Fail(StatusCodes.Status409Conflict, HeldByAnother, "Held by another transaction",
                $"The stock of order '{orderId}' is held by another transaction ({other}); it is not held twice.");
        }

        foreach (var item in items) // check every line before touching any
        {
            var row = await StockQueries.FindAsync(connection, transaction, item.Sku, ct);
            if (row is null)
            {
                return context.Fail(StatusCodes.Status422UnprocessableEntity, Problems.UnknownSku, "Unknown SKU", $"There is no SKU '{item.Sku}'.");
            }

            if (row.LockedBy is { } holder && holder != context.Gid)
            {
                return context.Fail(StatusCodes.Status409Conflict, Problems.RowLocked, "Row locked",
                    $"'{item.Sku}' is locked by prepared transaction {holder} until its outcome.");
            }

            if (row.Available < item.Qty)
            {
                return context.Fail(StatusCodes.Status409Conflict, Problems.OutOfStock, "Out of stock",
                    $"Out of stock: '{item.Sku}' has {row.Available} available, {item.Qty} requested.");
            }
        }

        var now = Sql.Timestamp(timeProvider.GetUtcNow());
        foreach (var item in items)
        {
            await Sql.ExecuteAsync(connection, transaction,
                "UPDATE stock SET available = available - $qty, held = held + $qty, locked_by = CASE WHEN $lock = 1 THEN $gid ELSE locked_by END WHERE sku = $sku", ct,
                ("$qty", item.Qty), ("$sku", item.Sku), ("$lock", lockRows ? 1 : 0), ("$gid", context.Gid));
            await Sql.ExecuteAsync(connection, transaction,
                "INSERT INTO holds (gid, sku, qty, order_id, state, at) VALUES ($gid, $sku, $qty, $order, 'held', $at)", ct,
                ("$gid", context.Gid), ("$sku", item.Sku), ("$qty", item.Qty), ("$order", orderId), ("$at", now));
        }

        Branches.MarkApplied(context);
        return Result(context, "held", items);
    }

    /// <summary>The outcome is commit: what this gid holds is sold (held → sold) and its row locks are dropped.</summary>
    public Task<BranchResult> SellAsync(BranchContext context, CancellationToken ct) => SettleAsync(context, "sold", ct);

    /// <summary>The outcome is abort: what this gid holds goes back (held → available) and its row locks are dropped.</summary>
    public Task<BranchResult> ReleaseAsync(BranchContext context, CancellationToken ct) => SettleAsync(context, "released", ct);

    private async Task<BranchResult> SettleAsync(BranchContext context, string to, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        await Sql.ExecuteAsync(connection, transaction, "UPDATE stock SET locked_by = NULL WHERE locked_by = $gid", ct, ("$gid", context.Gid));
        var held = await HoldsOfAsync(connection, transaction, context.Gid, "held", ct);
        if (held.Count == 0)
        {
            var settled = await HoldsOfAsync(connection, transaction, context.Gid, to, ct);
            return settled.Count > 0
                ? Result(context, "already-" + to, settled)
                : Branches.Skipped(context, "nothing to settle: this transaction holds no stock");
        }

        var column = to == "sold" ? "sold" : "available";
        foreach (var item in held)
        {
            await Sql.ExecuteAsync(connection, transaction,
                $"UPDATE stock SET held = held - $qty, {column} = {column} + $qty WHERE sku = $sku", ct, ("$qty", item.Qty), ("$sku", item.Sku));
        }

        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE holds SET state = $to, settled_at = $at WHERE gid = $gid AND state = 'held'", ct,
            ("$to", to), ("$gid", context.Gid), ("$at", Sql.Timestamp(timeProvider.GetUtcNow())));
        Branches.MarkApplied(context);
        return Result(context, to, held);
    }

    /// <summary>The gid (other than <paramref name="gid"/>) that holds or bought the stock of <paramref name="orderId"/>, if any.</summary>
    private static async Task<string?> HeldForOrderByAnotherAsync(SqliteConnection connection, SqliteTransaction transaction, string orderId, string gid, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT gid FROM holds WHERE order_id = $order AND gid <> $gid AND state <> 'released' LIMIT 1", ("$order", orderId), ("$gid", gid));
        return await command.ExecuteScalarAsync(ct) as string;
    }

    private static async Task<List<OrderItem>> HoldsOfAsync(SqliteConnection connection, SqliteTransaction transaction, string gid, string state, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT sku, qty FROM holds WHERE gid = $gid AND state = $state ORDER BY sku", ("$gid", gid), ("$state", state));
        await using var reader = await command.ExecuteReaderAsync(ct);
        var items = new List<OrderItem>();
        while (await reader.ReadAsync(ct))
        {
            items.Add(new OrderItem(reader.GetString(0), reader.GetInt32(1)));
        }

        return items;
    }

    private static BranchResult Result(BranchContext context, string outcome, IReadOnlyList<OrderItem> items) =>
        context.Ok(new InventoryResult(context.Gid, outcome, items), ShopJsonContext.Web.InventoryResult);

    /// <summary>The payload's items, one line per SKU (duplicates summed), and its order id when it has one.</summary>
    private static (List<OrderItem> Items, string? OrderId, Dictionary<string, string[]>? Errors) ReadItems(JsonElement payloadJson)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        var payload = OrderPayload.Read(payloadJson);
        if (payload?.Items is not { Count: > 0 and <= MaxItems } lines)
        {
            errors["payload.items"] = [$"items must list 1 to {MaxItems} lines of sku and qty."];
            return ([], null, errors);
        }

        var totals = new Dictionary<string, int>(StringComparer.Ordinal);
        for (var i = 0; i < lines.Count; i++)
        {
            if (lines[i] is not { } line || string.IsNullOrEmpty(line.Sku) || line.Qty is < 1 or > MaxQty)
            {
                errors[$"payload.items[{i}]"] = [$"Each line needs a sku and a qty from 1 to {MaxQty}."];
                continue;
            }

            totals[line.Sku] = totals.GetValueOrDefault(line.Sku) + line.Qty;
        }

        if (payload.OrderId is { Length: > 200 })
        {
            errors["payload.orderId"] = ["orderId is at most 200 characters."];
        }

        return errors.Count > 0
            ? ([], null, errors)
            : ([.. totals.OrderBy(t => t.Key, StringComparer.Ordinal).Select(t => new OrderItem(t.Key, t.Value))],
                string.IsNullOrEmpty(payload.OrderId) ? null : payload.OrderId, null);
    }
}
