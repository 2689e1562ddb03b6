from django.urls import path
from notifications import views

urlpatterns = [
    path("token/<int:user_id>/", views.socket_token, name="socket-token"),
    path("notify/<int:user_id>/", views.notify, name="notify"),
    path("sign-out-everywhere/<int:user_id>/", views.sign_out_everywhere,
         name="sign-out-everywhere"),
]
