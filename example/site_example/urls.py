from django.urls import path

from site_example import views

urlpatterns = [
    path("", views.home, name="home"),
    path("cart/add", views.cart_add, name="cart_add"),
    path("reset", views.reset, name="reset"),
    path("big", views.big, name="big"),
    path("counter", views.counter, name="counter"),
    path("nosession", views.nosession, name="nosession"),
]
