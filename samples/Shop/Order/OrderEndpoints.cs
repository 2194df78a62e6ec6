using Microsoft.AspNetCore.Builder;
using Shop.Infrastructure;
using Treaty.AspNetCore.Barrier;

namespace Shop.Order;

/// <summary>
/// The Order service's part in every protocol. The order is stored PENDING by the checkout; its
/// branch opens it (<see cref="OrderService.OpenAsync"/>: it exists and belongs to this
/// transaction), then the outcome makes it CONFIRMED or CANCELLED with the reason. The
/// transaction itself is defined in <see cref="OrderTransaction.Build"/>.
/// </summary>
internal static class OrderEndpoints
{
    public static void Map(WebApplication app, OrderService orders)
    {
        // Saga: create first; confirm is the pivot step, after payment and stock.
        app.MapBranch("/saga/order/create", orders.OpenAsync);
        app.MapBranch("/saga/order/cancel", orders.CancelAsync);
        app.MapBranch("/saga/order/confirm", orders.ConfirmAsync);

        app.MapBranch("/tcc/order/{op}", (ctx, ct) => ctx.Op switch
        {
            "try" => orders.OpenAsync(ctx, ct),
            "confirm" => orders.ConfirmAsync(ctx, ct),
            "cancel" => orders.CancelAsync(ctx, ct),
            _ => Branches.UnexpectedOp(ctx),
        });

        app.MapBranch("/2pc/order/{op}", (ctx, ct) => ctx.Op switch
        {
            "prepare" => orders.OpenAsync(ctx, ct),
            "commit" => orders.ConfirmAsync(ctx, ct),
            "rollback" => orders.CancelAsync(ctx, ct),
            _ => Branches.UnexpectedOp(ctx),
        });

        app.MapBranch("/3pc/order/{op}", (ctx, ct) => ctx.Op switch
        {
            "canCommit" => orders.OpenAsync(ctx, ct),
            "preCommit" => Branches.Acknowledge(ctx),
            "doCommit" => orders.ConfirmAsync(ctx, ct),
            "abort" => orders.CancelAsync(ctx, ct),
            _ => Branches.UnexpectedOp(ctx),
        });
    }
}
