using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Shop.Infrastructure;
using Treaty.Core.Contracts;

namespace Shop.Order;

/// <summary>
/// Checkout and orders. A checkout stores the order (PENDING) and its idempotency record in one
/// SQLite transaction, then submits the saga <c>order → payment → inventory → confirm</c>
/// (confirm is the pivot). The order's branch endpoints move it to CONFIRMED or CANCELLED.
/// </summary>
internal sealed partial class OrderService(ShopDatabase database, OrderSaga saga, FaultRegistry faults, TimeProvider timeProvider, ILogger<OrderService> logger)
{
    public const string IdempotencyKeyHeader = "Idempotency-Key";

    private const int MaxKeyLength = 255;
    private const int MaxCustomerIdLength = 64;
    private const int MaxItems = 20;
    private const int MaxQty = 1000;
    private static readonly TimeSpan ReasonLookupTimeout = TimeSpan.FromSeconds(2);

    public static void Map(WebApplication app)
    {
        var service = app.Services.GetRequiredService<OrderService>();
        app.MapPost("/checkout", Endpoints.Handler(service.CheckoutAsync));
        app.MapGet("/orders", service.ListAsync);
        app.MapGet("/orders/{id}", service.GetAsync);
        app.MapPost("/saga/order/create", Endpoints.Handler(http => service.BranchAsync(http, BranchDirection.Forward, service.CreateAsync)));
        app.MapPost("/saga/order/cancel", Endpoints.Handler(service.CancelAsync));
        app.MapPost("/saga/order/confirm", Endpoints.Handler(http => service.BranchAsync(http, BranchDirection.Forward, service.ConfirmAsync)));
    }

    private async Task<IResult> CheckoutAsync(HttpContext http)
    {
        var ct = http.RequestAborted;
        var key = http.Request.Headers[IdempotencyKeyHeader].ToString();
        if (string.IsNullOrWhiteSpace(key))
        {
            return Problems.Validation(IdempotencyKeyHeader, "The Idempotency-Key header is required: a unique value per checkout, reused when retrying it.");
        }

        if (key.Length > MaxKeyLength)
        {
            return Problems.Validation(IdempotencyKeyHeader, $"The Idempotency-Key header is at most {MaxKeyLength} characters.");
        }

        var (request, error) = await JsonBody.ReadAsync(http.Request, ShopJsonContext.Web.CheckoutRequest, ct);
        if (request is null)
        {
            return error!;
        }

        var (checkout, errors) = Validate(request);
        if (checkout is null)
        {
            return Problems.Validation(errors);
        }

        var fingerprint = Convert.ToHexStringLower(SHA256.HashData(
            JsonSerializer.SerializeToUtf8Bytes(checkout.Fingerprint, ShopJsonContext.Web.CheckoutFingerprint)));
        var now = timeProvider.GetUtcNow();
        var (record, order, created) = await database.WriteAsync<(IdempotencyRecord Record, OrderRow? Order, bool Created)>(async (connection, transaction) =>
        {
            if (await OrderStore.FindKeyAsync(connection, transaction, key, ct) is { } existing)
            {
                return (existing, await OrderStore.FindAsync(connection, transaction, existing.OrderId, ct), false);
            }

            var orderId = NewOrderId();
            var row = new OrderRow(orderId, OrderSaga.GidOf(orderId), checkout.CustomerId, checkout.AmountCents, checkout.Items,
                OrderStatus.Pending, null, SubmitState.Unsent, now, now);
            var body = JsonSerializer.Serialize(new CheckoutResponse(orderId, row.Gid, OrderStatus.Processing), ShopJsonContext.Web.CheckoutResponse);
            var stored = new IdempotencyRecord(key, fingerprint, orderId, StatusCodes.Status202Accepted, body);
            // The order and the key commit together: a retry finds both or neither.
            await OrderStore.InsertAsync(connection, transaction, row, ct);
            await OrderStore.InsertKeyAsync(connection, transaction, stored, now, ct);
            return (stored, row, true);
        }, ct);

        if (record.Fingerprint != fingerprint)
        {
            return Problems.Of(StatusCodes.Status409Conflict, Problems.IdempotencyKeyReused, "Idempotency key reused",
                "This Idempotency-Key was used for a different checkout; use a new key for a new checkout.");
        }

        if (order is null)
        {
            throw new InvalidOperationException($"The idempotency record of key '{key}' names a missing order.");
        }

        if (!created)
        {
            http.Response.Headers["Idempotent-Replayed"] = "true";
        }

        if (order.SubmitState == SubmitState.Unsent)
        {
            // First attempt, or a retry after the coordinator could not be reached: (re)submit.
            var (outcome, detail) = await saga.SubmitAsync(order, ct);
            await RecordSubmitAsync(order, outcome, detail, ct);
            switch (outcome)
            {
                case SubmitOutcome.Unavailable:
                    http.Response.Headers.RetryAfter = "1";
                    return Problems.Of(StatusCodes.Status503ServiceUnavailable, Problems.CoordinatorUnavailable, "Coordinator unavailable",
                        $"Order {order.OrderId} is stored but its transaction could not be started yet ({detail}). " +
                        "Retry with the same Idempotency-Key; the order service also retries by itself.");
                case SubmitOutcome.Rejected:
                    return Problems.Stored(StatusCodes.Status502BadGateway, RejectedBody(order, detail));
                default:
                    break;
            }
        }
        else if (order.SubmitState == SubmitState.Rejected)
        {
            return Problems.Stored(record.StatusCode, record.Body);
        }

        http.Response.Headers.Location = "/orders/" + Uri.EscapeDataString(order.OrderId);
        return Problems.Stored(record.StatusCode, record.Body);
    }

    /// <summary>Stores how a submit ended: accepted, or rejected for good (the order is cancelled).</summary>
    public async Task RecordSubmitAsync(OrderRow order, SubmitOutcome outcome, string? detail, CancellationToken ct)
    {
        if (outcome == SubmitOutcome.Unavailable)
        {
            return;
        }

        var now = timeProvider.GetUtcNow();
        await database.WriteAsync(async (connection, transaction) =>
        {
            var changed = await OrderStore.SetSubmitStateAsync(connection, transaction, order.OrderId,
                outcome == SubmitOutcome.Accepted ? SubmitState.Accepted : SubmitState.Rejected, now, ct);
            if (changed == 1 && outcome == SubmitOutcome.Rejected)
            {
                await OrderStore.SetStatusAsync(connection, transaction, order.OrderId, OrderStatus.Cancelled,
                    "the coordinator rejected the transaction: " + detail, now, ct);
                await OrderStore.SetKeyResponseAsync(connection, transaction, order.OrderId, StatusCodes.Status502BadGateway, RejectedBody(order, detail), ct);
            }

            return changed;
        }, ct);
    }

    private static string RejectedBody(OrderRow order, string? detail) =>
        Problems.Json(StatusCodes.Status502BadGateway, Problems.CoordinatorRejected, "Coordinator rejected the transaction",
            $"Order {order.OrderId} was cancelled: {detail}");

    private async Task<IResult> ListAsync(string? status, CancellationToken ct)
    {
        var rows = await database.ReadAsync(c => OrderStore.ListAsync(c, status, ct), ct);
        return Results.Json(new OrderListView([.. rows.Select(r => r.ToView())]), ShopJsonContext.Web.OrderListView);
    }

    private async Task<IResult> GetAsync(string id, CancellationToken ct)
    {
        var row = await database.ReadAsync(c => OrderStore.FindAsync(c, null, id, ct), ct);
        return row is null
            ? Problems.NotFound($"No order '{id}'.")
            : Results.Json(row.ToView(), ShopJsonContext.Web.OrderView);
    }

    private Task<IResult> BranchAsync(HttpContext http, BranchDirection direction, Func<BranchContext, Task<BranchEffect>> handler) =>
        BranchBarrier.HandleAsync(http, database, direction, handler, timeProvider, faults);

    /// <summary>
    /// The order step: the order exists PENDING. Checkout stored it already; a saga submitted by
    /// someone else creates it here from the payload.
    /// </summary>
    private async Task<BranchEffect> CreateAsync(BranchContext context)
    {
        var (connection, transaction, ct) = (context.Connection, context.Transaction, context.CancellationToken);
        if (await OrderStore.FindByGidAsync(connection, transaction, context.Call.Gid, ct) is { } existing)
        {
            return existing.Status == OrderStatus.Cancelled
                ? BranchBarrier.Fail(StatusCodes.Status409Conflict, Problems.OrderState, "Order cancelled", $"Order {existing.OrderId} is cancelled.")
                : BranchBarrier.Ok(new OrderBranchResult(existing.OrderId, existing.Status, existing.Reason), ShopJsonContext.Web.OrderBranchResult, applied: true);
        }

        var (payload, invalid) = ReadPayload(context.Call);
        if (payload is null)
        {
            return invalid!;
        }

        if (await OrderStore.FindAsync(connection, transaction, payload.OrderId, ct) is not null)
        {
            return BranchBarrier.Fail(StatusCodes.Status409Conflict, Problems.OrderState, "Order exists",
                $"Order {payload.OrderId} belongs to another transaction.");
        }

        await OrderStore.InsertAsync(connection, transaction, payload with { Gid = context.Call.Gid, CreatedAt = context.Now, UpdatedAt = context.Now }, ct);
        return BranchBarrier.Ok(new OrderBranchResult(payload.OrderId, OrderStatus.Pending, null), ShopJsonContext.Web.OrderBranchResult, applied: true);
    }

    /// <summary>The compensation of the order step: CANCELLED, with the transaction's reason.</summary>
    private async Task<IResult> CancelAsync(HttpContext http)
    {
        var (call, error) = await BranchBarrier.ReadAsync(http.Request, http.RequestAborted);
        if (call is null)
        {
            return error!;
        }

        // Asked before the local transaction, so no database lock is held over a network call.
        var reason = await AbortReasonAsync(call.Gid, http.RequestAborted);
        var path = http.Request.Path.Value!;
        return await BranchBarrier.RunAsync(database, call, BranchDirection.Backward, timeProvider, async context =>
        {
            var (connection, transaction, ct) = (context.Connection, context.Transaction, context.CancellationToken);
            var order = await OrderStore.FindByGidAsync(connection, transaction, context.Call.Gid, ct);
            if (order is null)
            {
                return BranchBarrier.Skipped(context.Call, "nothing to cancel: there is no order for this transaction");
            }

            if (order.Status == OrderStatus.Cancelled)
            {
                return BranchBarrier.Ok(new OrderBranchResult(order.OrderId, order.Status, order.Reason), ShopJsonContext.Web.OrderBranchResult, applied: false);
            }

            // Cancelled even when the create step never ran here (a null compensation): checkout
            // stored the order PENDING, and the transaction has ended without it, so leaving it
            // PENDING would be a lie. The barrier keeps a late create from reviving it.
            await OrderStore.SetStatusAsync(connection, transaction, order.OrderId, OrderStatus.Cancelled, reason, context.Now, ct);
            return BranchBarrier.Ok(new OrderBranchResult(order.OrderId, OrderStatus.Cancelled, reason), ShopJsonContext.Web.OrderBranchResult, applied: true);
        }, () => faults.MarkApplied(path), http.RequestAborted);
    }

    /// <summary>The pivot: PENDING becomes CONFIRMED; money and stock taken by the earlier steps are now a sale.</summary>
    private async Task<BranchEffect> ConfirmAsync(BranchContext context)
    {
        var (connection, transaction, ct) = (context.Connection, context.Transaction, context.CancellationToken);
        var order = await OrderStore.FindByGidAsync(connection, transaction, context.Call.Gid, ct);
        if (order is null)
        {
            return BranchBarrier.Fail(StatusCodes.Status409Conflict, Problems.OrderState, "No order", "There is no order for this transaction.");
        }

        switch (order.Status)
        {
            case OrderStatus.Cancelled:
                return BranchBarrier.Fail(StatusCodes.Status409Conflict, Problems.OrderState, "Order cancelled", $"Order {order.OrderId} is cancelled.");
            case OrderStatus.Confirmed:
                return BranchBarrier.Ok(new OrderBranchResult(order.OrderId, order.Status, null), ShopJsonContext.Web.OrderBranchResult, applied: false);
            default:
                await OrderStore.SetStatusAsync(connection, transaction, order.OrderId, OrderStatus.Confirmed, null, context.Now, ct);
                return BranchBarrier.Ok(new OrderBranchResult(order.OrderId, OrderStatus.Confirmed, null), ShopJsonContext.Web.OrderBranchResult, applied: true);
        }
    }

    /// <summary>Why the transaction aborted, as the coordinator says; a generic reason when it cannot be asked.</summary>
    private async Task<string> AbortReasonAsync(string gid, CancellationToken ct)
    {
        const string fallback = "the transaction was aborted";
        using var timeout = new CancellationTokenSource(ReasonLookupTimeout, timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, timeout.Token);
        try
        {
            var view = await saga.Client.GetAsync(gid, linked.Token);
            return string.IsNullOrEmpty(view?.Reason) ? fallback : view.Reason;
        }
        catch (Exception e) when (e is HttpRequestException or Treaty.Client.TreatyApiException or JsonException
            || (e is OperationCanceledException && !ct.IsCancellationRequested))
        {
            LogReasonUnknown(gid, e.Message);
            return fallback;
        }
    }

    private static (OrderRow? Order, BranchEffect? Invalid) ReadPayload(BranchCall call)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        SagaPayload? payload = null;
        try
        {
            payload = call.Payload.ValueKind == JsonValueKind.Object ? call.Payload.Deserialize(ShopJsonContext.Web.SagaPayload) : null;
        }
        catch (JsonException)
        {
            // reported below
        }

        if (payload is null)
        {
            errors["payload"] = ["The payload must be an object with orderId, customerId, items and amount."];
            return (null, BranchBarrier.Invalid(errors));
        }

        if (string.IsNullOrEmpty(payload.OrderId) || payload.OrderId.Length > 64)
        {
            errors["payload.orderId"] = ["orderId is required (at most 64 characters)."];
        }

        if (string.IsNullOrEmpty(payload.CustomerId) || payload.CustomerId.Length > MaxCustomerIdLength)
        {
            errors["payload.customerId"] = [$"customerId is required (at most {MaxCustomerIdLength} characters)."];
        }

        if (payload.Items is not { Count: > 0 and <= MaxItems } || payload.Items.Exists(i => i is null || string.IsNullOrEmpty(i.Sku) || i.Qty is < 1 or > MaxQty))
        {
            errors["payload.items"] = [$"items must list 1 to {MaxItems} lines, each with a sku and a qty from 1 to {MaxQty}."];
        }

        long cents = 0;
        if (payload.Amount is not { } amount || !Money.TryToCents(amount, out cents))
        {
            errors["payload.amount"] = ["amount must be a positive number with at most two decimals."];
        }

        if (errors.Count > 0)
        {
            return (null, BranchBarrier.Invalid(errors));
        }

        return (new OrderRow(payload.OrderId!, "", payload.CustomerId!, cents, [.. payload.Items!.Select(i => i!)],
            OrderStatus.Pending, null, SubmitState.Accepted, default, default), null);
    }

    private sealed record ValidCheckout(string CustomerId, IReadOnlyList<OrderItem> Items, long AmountCents, CheckoutFingerprint Fingerprint);

    private static (ValidCheckout? Checkout, Dictionary<string, string[]> Errors) Validate(CheckoutRequest request)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        var protocol = request.Protocol ?? "saga";
        if (protocol != "saga")
        {
            errors["protocol"] = [protocol is "tcc" or "2pc" or "3pc" or "choreography"
                ? $"Protocol '{protocol}' is not supported by this shop yet; use 'saga'."
                : "protocol must be one of saga, tcc, 2pc, 3pc, choreography (only saga is supported yet)."];
        }

        if (string.IsNullOrWhiteSpace(request.CustomerId))
        {
            errors["customerId"] = ["customerId is required."];
        }
        else if (request.CustomerId.Length > MaxCustomerIdLength)
        {
            errors["customerId"] = [$"customerId is at most {MaxCustomerIdLength} characters."];
        }

        var items = new List<OrderItem>();
        long amount = 0;
        if (request.Items is not { Count: > 0 and <= MaxItems } lines)
        {
            errors["items"] = [$"items must list 1 to {MaxItems} lines."];
        }
        else
        {
            for (var i = 0; i < lines.Count; i++)
            {
                if (lines[i] is not { } line)
                {
                    errors[$"items[{i}]"] = ["Each line is an object with sku and qty."];
                    continue;
                }

                Product? product = null;
                if (string.IsNullOrWhiteSpace(line.Sku))
                {
                    errors[$"items[{i}].sku"] = ["sku is required."];
                }
                else if (!Catalogue.Products.TryGetValue(line.Sku, out product))
                {
                    errors[$"items[{i}].sku"] = [$"Unknown SKU '{(line.Sku.Length > 40 ? line.Sku[..40] + "…" : line.Sku)}'."];
                }

                if (line.Qty is not (>= 1 and <= MaxQty))
                {
                    errors[$"items[{i}].qty"] = [$"qty must be a whole number from 1 to {MaxQty}."];
                }

                if (product is not null && line.Qty is { } qty and >= 1 and <= MaxQty)
                {
                    items.Add(new OrderItem(product.Sku, qty));
                    amount += product.PriceCents * qty;
                }
            }
        }

        if (errors.Count > 0)
        {
            return (null, errors);
        }

        return (new ValidCheckout(request.CustomerId!, items, amount, new CheckoutFingerprint(request.CustomerId!, items, protocol)), errors);
    }

    private static string NewOrderId() => "ord-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));

    [LoggerMessage(EventId = 10, Level = LogLevel.Warning, Message = "Could not ask the coordinator why {Gid} aborted: {Detail}")]
    private partial void LogReasonUnknown(string gid, string detail);
}
