using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Data.Sqlite;
using Shop.Infrastructure;

namespace Shop.Inventory;

/// <summary>
/// The stock. A reservation moves quantity from <c>available</c> to <c>reserved</c>; a release moves
/// it back. The saga has no inventory "confirm" call, so a reservation of a committed order simply
/// stays in <c>reserved</c>: for a committed order "reserved" is the sold quantity. That keeps one
/// invariant that always holds, in flight or not: <c>available + reserved == initial</c>; and after
/// every transaction has ended, <c>reserved</c> equals the quantity of the confirmed orders.
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
            PRIMARY KEY (gid, sku)
        );
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

    public static void Map(WebApplication app, ShopDatabase database)
    {
        var timeProvider = app.Services.GetRequiredService<TimeProvider>();
        var faults = app.Services.GetRequiredService<FaultRegistry>();

        app.MapGet("/stock", async (CancellationToken ct) =>
        {
            var items = await database.ReadAsync(async connection =>
            {
                await using var command = Sql.Command(connection, null, "SELECT sku, initial, available, reserved FROM stock ORDER BY sku");
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

        app.MapPost("/saga/inventory/reserve", Endpoints.Handler(http =>
            BranchBarrier.HandleAsync(http, database, BranchDirection.Forward, ReserveAsync, timeProvider, faults)));

        app.MapPost("/saga/inventory/release", Endpoints.Handler(http =>
            BranchBarrier.HandleAsync(http, database, BranchDirection.Backward, ReleaseAsync, timeProvider, faults)));
    }


    private static async Task<BranchEffect> ReserveAsync(BranchContext context)
    {
        var (items, invalid) = ReadItems(context.Call);
        if (invalid is not null)
        {
            return invalid;
        }

        var (connection, transaction, ct) = (context.Connection, context.Transaction, context.CancellationToken);
        var existing = await ReservationsAsync(connection, transaction, context.Call.Gid, ct);
        if (existing.Count > 0)
        {
            // Reserved already under another branch name: never take the stock twice for one gid.
            return Result(context, "already-reserved", existing, applied: false);
        }

        // All or nothing: check every line before touching any.
        foreach (var item in items)
        {
            var stock = await FindStockAsync(connection, transaction, item.Sku, ct);
            if (stock is null)
            {
                return BranchBarrier.Fail(StatusCodes.Status422UnprocessableEntity, Problems.UnknownSku, "Unknown SKU",
                    $"There is no SKU '{item.Sku}'.");
            }

            if (stock.Available < item.Qty)
            {
                return BranchBarrier.Fail(StatusCodes.Status409Conflict, Problems.OutOfStock, "Out of stock",
                    $"Out of stock: '{item.Sku}' has {stock.Available} available, {item.Qty} requested.");
            }
        }

        foreach (var item in items)
        {
            await Sql.ExecuteAsync(connection, transaction,
                "UPDATE stock SET available = available - $qty, reserved = reserved + $qty WHERE sku = $sku", ct,
                ("$qty", item.Qty), ("$sku", item.Sku));
            await Sql.ExecuteAsync(connection, transaction,
                "INSERT INTO reservations (gid, sku, qty, released, at) VALUES ($gid, $sku, $qty, 0, $at)", ct,
                ("$gid", context.Call.Gid), ("$sku", item.Sku), ("$qty", item.Qty), ("$at", Sql.Timestamp(context.Now)));
        }

        return Result(context, "reserved", items, applied: true);
    }

    private static async Task<BranchEffect> ReleaseAsync(BranchContext context)
    {
        var (connection, transaction, ct) = (context.Connection, context.Transaction, context.CancellationToken);
        // The reservations, not the payload, say what to give back: exactly what this gid took, once.
        var held = await ReservationsAsync(connection, transaction, context.Call.Gid, ct, unreleasedOnly: true);
        if (held.Count == 0)
        {
            return BranchBarrier.Skipped(context.Call, "nothing to release: this transaction holds no stock");
        }

        foreach (var item in held)
        {
            await Sql.ExecuteAsync(connection, transaction,
                "UPDATE stock SET available = available + $qty, reserved = reserved - $qty WHERE sku = $sku", ct,
                ("$qty", item.Qty), ("$sku", item.Sku));
        }

        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE reservations SET released = 1, released_at = $at WHERE gid = $gid AND released = 0", ct,
            ("$gid", context.Call.Gid), ("$at", Sql.Timestamp(context.Now)));
        return Result(context, "released", held, applied: true);
    }

    /// <summary>The payload's items, one line per SKU (duplicates summed).</summary>
    private static (List<OrderItem> Items, BranchEffect? Invalid) ReadItems(BranchCall call)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        SagaPayload? payload = null;
        try
        {
            payload = call.Payload.ValueKind == System.Text.Json.JsonValueKind.Object
                ? call.Payload.Deserialize(ShopJsonContext.Web.SagaPayload)
                : null;
        }
        catch (System.Text.Json.JsonException)
        {
            // reported below as an invalid payload
        }

        if (payload?.Items is not { Count: > 0 and <= MaxItems } lines)
        {
            errors["payload.items"] = [$"items must list 1 to {MaxItems} lines of sku and qty."];
            return ([], BranchBarrier.Invalid(errors));
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

        return errors.Count > 0
            ? ([], BranchBarrier.Invalid(errors))
            : ([.. totals.OrderBy(t => t.Key, StringComparer.Ordinal).Select(t => new OrderItem(t.Key, t.Value))], null);
    }

    private static BranchEffect Result(BranchContext context, string outcome, IReadOnlyList<OrderItem> items, bool applied) =>
        BranchBarrier.Ok(new InventoryResult(context.Call.Gid, outcome, items), ShopJsonContext.Web.InventoryResult, applied);

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
        await using var command = Sql.Command(connection, transaction, "SELECT sku, initial, available, reserved FROM stock WHERE sku = $sku", ("$sku", sku));
        var items = await ReadStockAsync(command, ct);
        return items.Count == 0 ? null : items[0];
    }

    private static async Task<List<StockView>> ReadStockAsync(SqliteCommand command, CancellationToken ct)
    {
        await using var reader = await command.ExecuteReaderAsync(ct);
        var items = new List<StockView>();
        while (await reader.ReadAsync(ct))
        {
            items.Add(new StockView(reader.GetString(0), reader.GetInt32(1), reader.GetInt32(2), reader.GetInt32(3)));
        }

        return items;
    }
}
