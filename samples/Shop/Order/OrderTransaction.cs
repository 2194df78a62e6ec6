using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Shop.Infrastructure;
using Treaty.Client;
using Treaty.Core.Contracts;
using Treaty.Core.Diagnostics;

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

/// <summary>The checkout's transaction: its definition under each protocol, and its submission.</summary>
internal sealed partial class OrderTransaction(ShopOptions options, TreatyClient client, IServer server, TimeProvider timeProvider, ILogger<OrderTransaction> logger)
{
    private static readonly TimeSpan SubmitTimeout = TimeSpan.FromSeconds(10);

    /// <summary>The protocols a checkout may ask for (<c>choreography</c> is not built yet).</summary>
    public static readonly string[] Protocols = ["saga", "tcc", "2pc", "3pc"];

    public TreatyClient Client => client;

    public static string GidOf(string orderId) => "checkout-" + orderId;

    /// <summary>
    /// The definition, a pure function of the order and the configured URLs, so every resubmission
    /// of one order sends the same body (the coordinator then recognises it by its gid). Three
    /// branches under every protocol — the order, the payment, the stock — on each service's
    /// endpoints for that protocol (<c>/{protocol}/{service}/{op}</c>).
    /// </summary>
    public SubmitTransactionRequest Build(OrderRow order)
    {
        var self = SelfUrl();
        var payment = Trim(options.PaymentUrl!);
        var inventory = Trim(options.InventoryUrl!);
        var payload = new OrderPayload
        {
            OrderId = order.OrderId,
            CustomerId = order.CustomerId,
            Items = [.. order.Items],
            Amount = Money.FromCents(order.AmountCents),
        };
        var json = ShopJsonContext.Web.OrderPayload;
        return order.Protocol switch
        {
            // TCC: every try at once (hold), then every confirm (or every cancel).
            "tcc" => new TccBuilder(order.Gid).WithPayload(payload, json)
                .Branch("order", $"{self}/tcc/order/try", $"{self}/tcc/order/confirm", $"{self}/tcc/order/cancel")
                .Branch("payment", $"{payment}/tcc/payment/try", $"{payment}/tcc/payment/confirm", $"{payment}/tcc/payment/cancel")
                .Branch("inventory", $"{inventory}/tcc/inventory/try", $"{inventory}/tcc/inventory/confirm", $"{inventory}/tcc/inventory/cancel")
                .Build(),

            // 2PC: every prepare at once (the votes), then every commit (or every rollback).
            "2pc" => new TwoPhaseCommitBuilder(order.Gid).WithPayload(payload, json)
                .Branch("order", $"{self}/2pc/order/prepare", $"{self}/2pc/order/commit", $"{self}/2pc/order/rollback")
                .Branch("payment", $"{payment}/2pc/payment/prepare", $"{payment}/2pc/payment/commit", $"{payment}/2pc/payment/rollback")
                .Branch("inventory", $"{inventory}/2pc/inventory/prepare", $"{inventory}/2pc/inventory/commit", $"{inventory}/2pc/inventory/rollback")
                .Build(),

            // 3PC: canCommit (the votes), preCommit, doCommit (or abort).
            "3pc" => new ThreePhaseCommitBuilder(order.Gid).WithPayload(payload, json)
                .Branch("order", $"{self}/3pc/order/canCommit", $"{self}/3pc/order/preCommit", $"{self}/3pc/order/doCommit", $"{self}/3pc/order/abort")
                .Branch("payment", $"{payment}/3pc/payment/canCommit", $"{payment}/3pc/payment/preCommit", $"{payment}/3pc/payment/doCommit", $"{payment}/3pc/payment/abort")
                .Branch("inventory", $"{inventory}/3pc/inventory/canCommit", $"{inventory}/3pc/inventory/preCommit", $"{inventory}/3pc/inventory/doCommit", $"{inventory}/3pc/inventory/abort")
                .Build(),

            // Saga: one step after the other; a failed step undoes the ones before it, in reverse.
            _ => new SagaBuilder(order.Gid).WithPayload(payload, json)
                .Step("order", action: $"{self}/saga/order/create", compensate: $"{self}/saga/order/cancel")
                .Step("payment", action: $"{payment}/saga/payment/reserve", compensate: $"{payment}/saga/payment/refund")
                .Step("inventory", action: $"{inventory}/saga/inventory/reserve", compensate: $"{inventory}/saga/inventory/release")
                // The point of no return: once the order is confirmed the saga only moves forward.
                .Step("confirm", action: $"{self}/saga/order/confirm", pivot: true)
                // After the pivot: the held stock is sold.
                .Step("stock", action: $"{inventory}/saga/inventory/commit")
                .Build(),
        };
    }

    public async Task<(SubmitOutcome Outcome, string? Detail)> SubmitAsync(OrderRow order, CancellationToken cancellationToken)
    {
        // Every line about this order's transaction carries its gid as the log scope `gid`.
        using var scope = logger.BeginGidScope(order.Gid);
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
        catch (Exception e) when (e is HttpRequestException or System.Net.Sockets.SocketException or IOException)
        {
            // SocketException too: a coordinator killed while the connection is being made can make
            // HttpClient throw it bare ("Transport endpoint is not connected", seen in the chaos test).
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

