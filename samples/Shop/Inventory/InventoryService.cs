using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Data.Sqlite;
using Shop.Infrastructure;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.SemanticLocks;

namespace Shop.Inventory;

/// <summary>
/// The stock. A reservation moves quantity from <c>available</c> to <c>reserved</c>; a release moves
/// it back. The saga has no inventory "confirm" call, so a reservation of a committed order simply
/// stays in <c>reserved</c>: for a committed order "reserved" is the sold quantity. That keeps one
/// invariant that always holds, in flight or not: <c>available + reserved == initial</c>; and after
/// every transaction has ended, <c>reserved</c> equals the quantity of the confirmed orders.
/// <para>
/// Semantic lock (the rule): a reservation in flight holds <c>reservation/{orderId}</c> for its gid,
/// taken in the same local transaction as the reservation rows (behind the kit's barrier). While it
/// is held, a reservation of the same order under any other gid is refused with a definitive 409
/// (<c>reservation-in-flight</c>, nothing applied), so the stock of one order is never reserved —
/// sold — twice, even if a second saga for it shows up. The lock ends with the saga: the release
/// (compensation) returns the stock and drops it; the saga's last step (<c>stock</c>, after the
/// pivot) calls <c>/saga/inventory/commit</c>, which turns the reservation into a sale and drops it.
/// Once sold, the reservation rows themselves keep a second gid of that order out. Readers see the
/// quantity under a held lock as <c>inFlight</c> (PROCESSING), the rest of <c>reserved</c> as sold.
/// </para>
/// </summary>
internal static class InventoryService
{
    public const string Schema = """
        CREATE TABLE IF NOT EXISTS stock (
            sku TEXT PRIMARY KEY,
            initial INTEGER NOT NULL,
            available INTEGER NOT NULL CHECK (available >= 0),
            reserved INTEGER NOT NULL CHECK (reserved >= 0),
            CHECK (available + reserved = initial)
        );
        CREATE TABLE IF NOT EXISTS reservations (
            gid TEXT NOT NULL,
            sku TEXT NOT NULL REFERENCES stock (sku),
            qty INTEGER NOT NULL CHECK (qty > 0),
            released INTEGER NOT NULL DEFAULT 0,
            at TEXT NOT NULL,
            released_at TEXT,
            order_id TEXT,
            PRIMARY KEY (gid, sku)
        );
        CREATE INDEX IF NOT EXISTS reservations_order ON reservations (order_id) WHERE order_id IS NOT NULL;
        CREATE INDEX IF NOT EXISTS reservations_sku ON reservations (sku, at);
        """;

    private const int MaxQty = 1000;
    private const int MaxItems = 20;

    public static void Seed(SqliteConnection connection, SqliteTransaction transaction)
    {
        foreach (var product in Catalogue.Products.Values)
        {
            // INSERT OR IGNORE: seeds on the first start only, never resets the stock later.
            using var command = Sql.Command(connection, transaction,
                "INSERT OR IGNORE INTO stock (sku, initial, available, reserved) VALUES ($sku, $n, $n, 0)",
                ("$sku", product.Sku), ("$n", product.InitialStock));
            command.ExecuteNonQuery();
        }
    }

    /// <summary>The problem type of a reservation refused because the order's stock is held by another saga.</summary>
    public const string ReservationInFlight = "https://treaty.dev/problems/shop/reservation-in-flight";

    private const string StockColumns = """
        sku, initial, available, reserved,
        (SELECT COALESCE(SUM(r.qty), 0) FROM reservations r
         WHERE r.sku = stock.sku AND r.released = 0
           AND EXISTS (SELECT 1 FROM treaty_semantic_locks l WHERE l.gid = r.gid AND l.resource LIKE 'reservation/%')) AS in_flight
        """;

    public static void Map(WebApplication app, ShopDatabase database)
    {
        var timeProvider = app.Services.GetRequiredService<TimeProvider>();
        var locks = app.Services.GetRequiredService<SemanticLockManager>();

        app.MapGet("/stock", async (CancellationToken ct) =>
        {
            var items = await database.ReadAsync(async connection =>
            {
                await using var command = Sql.Command(connection, null, $"SELECT {StockColumns} FROM stock ORDER BY sku");
                return await ReadStockAsync(command, ct);
            }, ct);
            return Results.Json(new StockListView(items), ShopJsonContext.Web.StockListView);
        });

        app.MapGet("/stock/{sku}", async (string sku, CancellationToken ct) =>
        {
            var stock = await database.ReadAsync(connection => FindStockAsync(connection, null, sku, ct), ct);
            return stock is null
                ? Problems.NotFound($"No SKU '{sku}'.")
                : Results.Json(stock, ShopJsonContext.Web.StockView);
        });

        app.MapGet("/stock/{sku}/reservations", async (string sku, CancellationToken ct) =>
        {
            var list = await database.ReadAsync(async connection =>
            {
                if (await FindStockAsync(connection, null, sku, ct) is null)
                {
                    return null;
                }

                await using var command = Sql.Command(connection, null,
                    "SELECT gid, sku, qty, released, at, released_at FROM reservations WHERE sku = $sku ORDER BY at, gid", ("$sku", sku));
                await using var reader = await command.ExecuteReaderAsync(ct);
                var reservations = new List<ReservationView>();
                while (await reader.ReadAsync(ct))
                {
                    reservations.Add(new ReservationView(reader.GetString(0), reader.GetString(1), reader.GetInt32(2), reader.GetInt64(3) != 0,
                        Sql.ParseTimestamp(reader.GetString(4)), reader.IsDBNull(5) ? null : Sql.ParseTimestamp(reader.GetString(5))));
                }

                return new ReservationListView(sku, reservations);
            }, ct);
            return list is null
                ? Problems.NotFound($"No SKU '{sku}'.")
                : Results.Json(list, ShopJsonContext.Web.ReservationListView);
        });

        app.MapBranch("/saga/inventory/reserve", (context, ct) => ReserveAsync(context, locks, timeProvider.GetUtcNow(), ct));
        app.MapBranch("/saga/inventory/release", (context, ct) => ReleaseAsync(context, locks, timeProvider.GetUtcNow(), ct));
        app.MapBranch("/saga/inventory/commit", (context, ct) => CommitAsync(context, locks, ct));
    }


    private static async Task<BranchResult> ReserveAsync(BranchContext context, SemanticLockManager locks, DateTimeOffset now, CancellationToken ct)
    {
        var (items, orderId, errors) = ReadItems(context.Payload);
        if (errors is not null)
        {
            return Branches.Invalid(context, errors);
        }

        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        var existing = await ReservationsAsync(connection, transaction, context.Gid, ct);
        if (existing.Count > 0)
        {
            // Reserved already under another branch name: never take the stock twice for one gid.
            return Result(context, "already-reserved", existing);
        }

        // The order's stock in flight belongs to one saga at a time (see the class comment).
        var resource = ReservationResource(orderId ?? context.Gid);
        var attempt = await locks.TryAcquireAsync(context.Transaction, resource, context.Gid, ct);
        if (!attempt.Acquired)
        {
            return context.Fail(StatusCodes.Status409Conflict, ReservationInFlight, "Reservation in flight",
                $"The stock of order '{orderId}' is being reserved by another transaction ({attempt.Holder.Gid}); it is not reserved twice.");
        }

        if (orderId is not null && await SoldToAnotherAsync(connection, transaction, orderId, context.Gid, ct))
        {
            return context.Fail(StatusCodes.Status409Conflict, ReservationInFlight, "Already reserved",
                $"The stock of order '{orderId}' is already reserved by another transaction; it is not reserved twice.");
        }

        // All or nothing: check every line before touching any.
        foreach (var item in items)
        {
            var stock = await FindStockAsync(connection, transaction, item.Sku, ct);
            if (stock is null)
            {
                return context.Fail(StatusCodes.Status422UnprocessableEntity, Problems.UnknownSku, "Unknown SKU",
                    $"There is no SKU '{item.Sku}'.");
            }

            if (stock.Available < item.Qty)
            {
                return context.Fail(StatusCodes.Status409Conflict, Problems.OutOfStock, "Out of stock",
                    $"Out of stock: '{item.Sku}' has {stock.Available} available, {item.Qty} requested.");
            }
        }

        foreach (var item in items)
        {
            await Sql.ExecuteAsync(connection, transaction,
                "UPDATE stock SET available = available - $qty, reserved = reserved + $qty WHERE sku = $sku", ct,
                ("$qty", item.Qty), ("$sku", item.Sku));
            await Sql.ExecuteAsync(connection, transaction,
                "INSERT INTO reservations (gid, sku, qty, released, at, order_id) VALUES ($gid, $sku, $qty, 0, $at, $order)", ct,
                ("$gid", context.Gid), ("$sku", item.Sku), ("$qty", item.Qty), ("$at", Sql.Timestamp(now)), ("$order", orderId));
        }

        Branches.MarkApplied(context);
        return Result(context, "reserved", items);
    }

    private static async Task<BranchResult> ReleaseAsync(BranchContext context, SemanticLockManager locks, DateTimeOffset now, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        // Whatever happens below, this gid's reservation is no longer in flight.
        await locks.ReleaseAllAsync(context.Transaction, context.Gid, ct);
        // The reservations, not the payload, say what to give back: exactly what this gid took, once.
        var held = await ReservationsAsync(connection, transaction, context.Gid, ct, unreleasedOnly: true);
        if (held.Count == 0)
        {
            return Branches.Skipped(context, "nothing to release: this transaction holds no stock");
        }

        foreach (var item in held)
        {
            await Sql.ExecuteAsync(connection, transaction,
                "UPDATE stock SET available = available + $qty, reserved = reserved - $qty WHERE sku = $sku", ct,
                ("$qty", item.Qty), ("$sku", item.Sku));
        }

        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE reservations SET released = 1, released_at = $at WHERE gid = $gid AND released = 0", ct,
            ("$gid", context.Gid), ("$at", Sql.Timestamp(now)));
        Branches.MarkApplied(context);
        return Result(context, "released", held);
    }

    /// <summary>After the pivot: the reservation is a sale; it leaves PROCESSING (its lock is dropped), the stock stays reserved.</summary>
    private static async Task<BranchResult> CommitAsync(BranchContext context, SemanticLockManager locks, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        var released = await locks.ReleaseAllAsync(context.Transaction, context.Gid, ct);
        var sold = await ReservationsAsync(connection, transaction, context.Gid, ct, unreleasedOnly: true);
        return Result(context, released > 0 ? "sold" : "already-sold", sold);
    }

    public static string ReservationResource(string orderId) => "reservation/" + orderId;

    /// <summary>Whether another gid holds an unreleased reservation for <paramref name="orderId"/>.</summary>
    private static async Task<bool> SoldToAnotherAsync(SqliteConnection connection, SqliteTransaction transaction, string orderId, string gid, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT 1 FROM reservations WHERE order_id = $order AND gid <> $gid AND released = 0 LIMIT 1", ("$order", orderId), ("$gid", gid));
        return await command.ExecuteScalarAsync(ct) is not null;
    }

    /// <summary>The payload's items, one line per SKU (duplicates summed), and its order id when it has one.</summary>
    private static (List<OrderItem> Items, string? OrderId, Dictionary<string, string[]>? Errors) ReadItems(JsonElement payloadJson)
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

    private static BranchResult Result(BranchContext context, string outcome, IReadOnlyList<OrderItem> items) =>
        context.Ok(new InventoryResult(context.Gid, outcome, items), ShopJsonContext.Web.InventoryResult);

    private static async Task<List<OrderItem>> ReservationsAsync(SqliteConnection connection, SqliteTransaction transaction, string gid, CancellationToken ct, bool unreleasedOnly = false)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT sku, qty FROM reservations WHERE gid = $gid AND ($all = 1 OR released = 0) ORDER BY sku",
            ("$gid", gid), ("$all", unreleasedOnly ? 0 : 1));
        await using var reader = await command.ExecuteReaderAsync(ct);
        var items = new List<OrderItem>();
        while (await reader.ReadAsync(ct))
        {
            items.Add(new OrderItem(reader.GetString(0), reader.GetInt32(1)));
        }

        return items;
    }

    private static async Task<StockView?> FindStockAsync(SqliteConnection connection, SqliteTransaction? transaction, string sku, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction, $"SELECT {StockColumns} FROM stock WHERE sku = $sku", ("$sku", sku));
        var items = await ReadStockAsync(command, ct);
        return items.Count == 0 ? null : items[0];
    }

    private static async Task<List<StockView>> ReadStockAsync(SqliteCommand command, CancellationToken ct)
    {
        await using var reader = await command.ExecuteReaderAsync(ct);
        var items = new List<StockView>();
        while (await reader.ReadAsync(ct))
        {
            items.Add(new StockView(reader.GetString(0), reader.GetInt32(1), reader.GetInt32(2), reader.GetInt32(3), reader.GetInt32(4)));
        }

        return items;
    }
}
