using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Shop.Infrastructure;
using Treaty.Client;
using Treaty.Core.Contracts;

namespace Shop.Order;

/// <summary>How a submit to the coordinator ended.</summary>
internal enum SubmitOutcome
{
    /// <summary>The coordinator has the transaction.</summary>
    Accepted,
    /// <summary>The coordinator refused it for good (a 4xx): it will never run.</summary>
    Rejected,
    /// <summary>Unknown (unreachable, timeout, 5xx): submit again; the gid makes that safe.</summary>
    Unavailable,
}

/// <summary>The checkout saga: its definition and its submission.</summary>
internal sealed partial class OrderSaga(ShopOptions options, TreatyClient client, IServer server, TimeProvider timeProvider, ILogger<OrderSaga> logger)
{
    private static readonly TimeSpan SubmitTimeout = TimeSpan.FromSeconds(10);

    public TreatyClient Client => client;

    public static string GidOf(string orderId) => "checkout-" + orderId;

    /// <summary>
    /// The definition, a pure function of the order and the configured URLs, so every resubmission
    /// of one order sends the same body (the coordinator then recognises it by its gid).
    /// </summary>
    public SubmitTransactionRequest Build(OrderRow order)
    {
        var self = SelfUrl();
        var payment = Trim(options.PaymentUrl!);
        var inventory = Trim(options.InventoryUrl!);
        var payload = new SagaPayload
        {
            OrderId = order.OrderId,
            CustomerId = order.CustomerId,
            Items = [.. order.Items],
            Amount = Money.FromCents(order.AmountCents),
        };
        return new SagaBuilder(order.Gid)
            .WithPayload(payload, ShopJsonContext.Web.SagaPayload)
            .Step("order", action: $"{self}/saga/order/create", compensate: $"{self}/saga/order/cancel")
            .Step("payment", action: $"{payment}/saga/payment/reserve", compensate: $"{payment}/saga/payment/refund")
            .Step("inventory", action: $"{inventory}/saga/inventory/reserve", compensate: $"{inventory}/saga/inventory/release")
            // The point of no return: once the order is confirmed the saga only moves forward.
            .Step("confirm", action: $"{self}/saga/order/confirm", pivot: true)
            .Build();
    }

    public async Task<(SubmitOutcome Outcome, string? Detail)> SubmitAsync(OrderRow order, CancellationToken cancellationToken)
    {
        using var timeout = new CancellationTokenSource(SubmitTimeout, timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            await client.SubmitAsync(Build(order), wait: null, linked.Token);
            return (SubmitOutcome.Accepted, null);
        }
        catch (TreatyApiException e) when (e.StatusCode == StatusCodes.Status409Conflict && e.Type == ProblemTypes.GidConflict)
        {
            // The gid exists: an earlier attempt got through (perhaps with URLs since changed).
            return (SubmitOutcome.Accepted, null);
        }
        catch (TreatyApiException e) when (!e.IsTransient)
        {
            LogRejected(order.Gid, e.Message);
            return (SubmitOutcome.Rejected, e.Message);
        }
        catch (TreatyApiException e)
        {
            LogUnavailable(order.Gid, e.Message);
            return (SubmitOutcome.Unavailable, e.Message);
        }
        catch (HttpRequestException e)
        {
            LogUnavailable(order.Gid, e.Message);
            return (SubmitOutcome.Unavailable, e.Message);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            LogUnavailable(order.Gid, "no answer within " + SubmitTimeout);
            return (SubmitOutcome.Unavailable, "the coordinator did not answer in time");
        }
    }

    /// <summary>This service's address for the coordinator's callbacks.</summary>
    public string SelfUrl()
    {
        if (options.PublicUrl is { } configured)
        {
            return Trim(configured);
        }

        var bound = server.Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault()
            ?? options.Urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)[0];
        // A wildcard binding cannot be called back: use loopback.
        bound = bound.Replace("://*", "://127.0.0.1", StringComparison.Ordinal)
            .Replace("://+", "://127.0.0.1", StringComparison.Ordinal)
            .Replace("://0.0.0.0", "://127.0.0.1", StringComparison.Ordinal)
            .Replace("://[::]", "://[::1]", StringComparison.Ordinal);
        return Trim(bound);
    }

    private static string Trim(string url) => url.TrimEnd('/');

    [LoggerMessage(EventId = 1, Level = LogLevel.Warning, Message = "The coordinator rejected transaction {Gid}: {Detail}")]
    private partial void LogRejected(string gid, string detail);

    [LoggerMessage(EventId = 2, Level = LogLevel.Warning, Message = "Could not submit transaction {Gid}, will submit it again: {Detail}")]
    private partial void LogUnavailable(string gid, string detail);
}

/// <summary>
/// Submits again the sagas of orders whose checkout could not reach the coordinator, so an order
/// never stays PENDING because its client gave up retrying.
/// </summary>
internal sealed partial class OrderResubmitter(ShopDatabase database, OrderSaga saga, OrderService service, TimeProvider timeProvider, ILogger<OrderResubmitter> logger)
    : BackgroundService
{
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(5);

    // Leave a fresh order to its own checkout request, which is still submitting it.
    private static readonly TimeSpan MinimumAge = TimeSpan.FromSeconds(10);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Period, timeProvider);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                try
                {
                    await ResubmitAsync(stoppingToken);
                }
                catch (Microsoft.Data.Sqlite.SqliteException e)
                {
                    LogFailed(e); // try again on the next tick
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // shutting down
        }
    }

    private async Task ResubmitAsync(CancellationToken cancellationToken)
    {
        var unsent = await database.ReadAsync(c => OrderStore.UnsentAsync(c, timeProvider.GetUtcNow() - MinimumAge, cancellationToken), cancellationToken);
        foreach (var order in unsent)
        {
            var (outcome, detail) = await saga.SubmitAsync(order, cancellationToken);
            await service.RecordSubmitAsync(order, outcome, detail, cancellationToken);
            if (outcome == SubmitOutcome.Unavailable)
            {
                return; // the coordinator is down: the rest on the next tick
            }
        }
    }

    [LoggerMessage(EventId = 3, Level = LogLevel.Error, Message = "Resubmitting unsent orders failed")]
    private partial void LogFailed(Exception exception);
}
